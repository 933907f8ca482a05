"""A mixed recording: many inputs' encoded frames → one composed, mixed, encoded HLS recording.

Import the module you use; this package imports nothing.

    layout      where each input goes on the canvas (templates, input lists)
    compose     draws a canvas from the inputs' latest frames
    overlay     background, watermarks and the patch picture
    mixer       the audio mixer
    inputs      decoding each input (video per input, Opus into the mixer)
    output      the mix's encoders and its HLS segments
    sei         user data SEI messages in the encoded video
    recorder    MixedHlsRecorder: the clock that drives all of the above
    worker      the mix driven by messages, in its own process or a thread
"""
