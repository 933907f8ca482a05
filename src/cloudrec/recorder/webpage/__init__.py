"""Web page recording: one headless chromium per recording, its page published into a room of
its own and recorded by an ordinary mix (:class:`.recording.WebpageRecording`)."""
