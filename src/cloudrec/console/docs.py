"""API docs that work offline: Swagger UI at ``/docs`` from the bundled ``swagger-ui-dist``.

FastAPI's own ``/docs`` and ``/redoc`` load their scripts, styles and favicon from CDNs, so
they are blank on a server without internet and tell those CDNs who reads the docs. The app is
built with ``docs_url``, ``redoc_url`` and ``openapi_url`` set to None and this module serves
``/docs`` and ``/openapi.json`` instead, behind the operator sign-in, with every asset from
``/console/static/vendor``. Swagger UI's online validator badge is turned off
(``validatorUrl: null``): it would send the schema's URL to validator.swagger.io. ReDoc is not
served (its standalone bundle would be a second copy of the same docs).
"""

from __future__ import annotations

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse

from cloudrec.console.assets import SWAGGER_UI

DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'")


def docs_page(title: str) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url="/openapi.json", title=f"{title} API",
        swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
        oauth2_redirect_url=None,
        swagger_ui_parameters={"validatorUrl": None})
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page
