"""The sound tap: a script added to every document before the page's own
(``Page.addScriptToEvaluateOnNewDocument``). It taps every ``AudioContext`` that connects to
its destination and every ``<audio>``/``<video>`` that plays (``captureStream()``) into one
48 kHz tap context, whose ``ScriptProcessorNode`` hands 16-bit stereo PCM to the worker
through the ``cloudrecAudio`` DevTools binding; ``cloudrecStart()`` / ``cloudrecStop()`` call
the ``cloudrecSignal`` binding."""

TAP_SCRIPT = r"""
(() => {
  if (window.__cloudrecTap) return;
  const send = window.cloudrecAudio;
  if (!send) return;
  const Ctx = window.AudioContext || window.webkitAudioContext;
  let tap = null, proc = null;
  const start = () => {
    if (tap) return tap;
    tap = new Ctx({sampleRate: 48000});
    proc = tap.createScriptProcessor(4096, 2, 2);
    const gain = tap.createGain(); gain.gain.value = 0;
    proc.connect(gain); gain.connect(tap.destination);
    proc.onaudioprocess = (e) => {
      const l = e.inputBuffer.getChannelData(0), r = e.inputBuffer.getChannelData(1);
      const out = new Int16Array(l.length * 2);
      for (let i = 0; i < l.length; i++) {
        out[2 * i] = Math.max(-1, Math.min(1, l[i])) * 32767;
        out[2 * i + 1] = Math.max(-1, Math.min(1, r[i])) * 32767;
      }
      const bytes = new Uint8Array(out.buffer);
      let s = '';
      for (let i = 0; i < bytes.length; i += 8192)
        s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
      send(btoa(s));
    };
    tap.resume();
    return tap;
  };
  window.__cloudrecTap = start;
  const feed = (stream) => {
    try { start().createMediaStreamSource(stream).connect(proc); } catch (e) {}
  };
  const taps = new WeakMap();
  const connect = AudioNode.prototype.connect;
  AudioNode.prototype.connect = function (target, ...rest) {
    const result = connect.call(this, target, ...rest);
    if (target instanceof AudioDestinationNode && this.context !== tap) {
      let dest = taps.get(this.context);
      if (!dest) {
        dest = this.context.createMediaStreamDestination();
        taps.set(this.context, dest);
        feed(dest.stream);
      }
      connect.call(this, dest);
    }
    return result;
  };
  document.addEventListener('play', (e) => {
    const el = e.target;
    if (el.__cloudrecTapped || !el.captureStream) return;
    const stream = el.captureStream();
    if (stream.getAudioTracks().length) { el.__cloudrecTapped = true; feed(stream); }
  }, true);
  window.cloudrecStart = () => window.cloudrecSignal && window.cloudrecSignal('start');
  window.cloudrecStop = () => window.cloudrecSignal && window.cloudrecSignal('stop');
  start();
})();
"""
