"""Where the console's bundled files are, and the pinned versions of the third-party ones
(``static/vendor/README.md`` says where they come from)."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
STATIC_URL = "/console/static"
HLS_JS_VERSION = "1.7.4"
SWAGGER_UI_VERSION = "5.35.0"
HLS_JS = f"{STATIC_URL}/vendor/hls.js-{HLS_JS_VERSION}/hls.min.js"
SWAGGER_UI = f"{STATIC_URL}/vendor/swagger-ui-dist-{SWAGGER_UI_VERSION}"
