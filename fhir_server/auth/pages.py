"""The authorization endpoint's pages: sign-in, consent (with a patient picker), errors.

Plain server-rendered HTML without scripts, so that it works in any browser and in tests driven by
form posts.  Every value shown is escaped; the flow's state rides in one signed hidden field
(``auth_session``).  The pages must never be framed: a consent page inside another site's frame
could be clicked through without the user knowing (clickjacking).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape

from starlette.responses import HTMLResponse

from fhir_server.auth.scopes import ScopeError, parse_scope

SESSION_FIELD = "auth_session"

_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    # No form-action: a browser would apply it to the redirect back to the app as well.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 36rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.4rem; }
label { display: block; margin: .6rem 0 .2rem; }
input[type=text], input[type=password] { width: 100%; padding: .4rem; box-sizing: border-box; }
fieldset { border: 1px solid #ccc; margin: 1rem 0; }
fieldset label { margin: .3rem 0; }
.error { color: #a00; background: #fee; padding: .5rem; border: 1px solid #fbb; }
.hint { color: #666; font-size: .9rem; }
button { margin: 1rem .5rem 0 0; padding: .5rem 1rem; }
code { font-size: .85rem; color: #555; }
"""

_KNOWN = {
    "openid": "Know who you are (OpenID Connect sign-in)",
    "fhirUser": "Know your FHIR user record (who you are in the health record)",
    "profile": "Know your profile (who you are in the health record)",
    "launch": "Use the patient and encounter the EHR opened it with",
    "launch/patient": "Work with one patient's record, chosen below",
    "launch/encounter": "Work with the current encounter",
    "offline_access": "Keep access when you are not using it (until you revoke it)",
    "online_access": "Keep access while you are using it",
}

_VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_WHOSE = {"patient": "of the patient", "user": "you may see", "system": "on the whole server"}


def describe_scope(token: str) -> str:
    """A line a person can read for one scope."""
    if token in _KNOWN:
        return _KNOWN[token]
    try:
        scope = parse_scope(token)
    except ScopeError:
        return "Other permission"
    verbs = [_VERBS[p] for p in "cruds" if p in scope.permissions]
    what = "all kinds of records" if scope.resource_type == "*" else f"{scope.resource_type} records"
    text = f"{_join(verbs).capitalize()} {what} {_WHOSE[scope.context]}"
    return text + (f" (only those matching {scope.query})" if scope.query else "")


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    html = (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")
    return HTMLResponse(html, status_code=status, headers={**_HEADERS, **(headers or {})})


def _error(message: str | None) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>' if message else ""


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def login_page(
    *,
    client_name: str,
    session: str,
    username: str = "",
    error: str | None = None,
    status: int = 200,
    retry_after: int | None = None,
) -> HTMLResponse:
    body = f"""
<h1>Sign in</h1>
<p><strong>{escape(client_name)}</strong> asks to access your health records.</p>
{_error(error)}
<form method="post" action="authorize">
{_hidden(SESSION_FIELD, session)}
<label for="username">Username</label>
<input type="text" id="username" name="username" value="{escape(username)}" autocomplete="username" required autofocus>
<label for="password">Password</label>
<input type="password" id="password" name="password" autocomplete="current-password" required>
<label for="totp">One-time code <span class="hint">(only if you set up an authenticator app)</span></label>
<input type="text" id="totp" name="totp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]*">
<button type="submit" name="action" value="login">Sign in</button>
</form>"""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return _page("Sign in", body, status, headers)


def consent_page(
    *,
    client_name: str,
    username: str,
    scopes: Iterable[str],
    session: str,
    checked: Iterable[str] | None = None,
    need_patient: bool = False,
    patients: Sequence[tuple[str, str]] = (),
    patient_query: str = "",
    patient: str = "",
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    """The scopes as checkboxes (all checked at first; unchecking one narrows the grant) and, when
    the app needs a patient and none is fixed by the user or the launch, a patient picker."""
    scopes = list(scopes)
    ticked = set(scopes if checked is None else checked)
    boxes = "\n".join(
        f'<label><input type="checkbox" name="scope" value="{escape(s)}"{" checked" if s in ticked else ""}> '
        f"{escape(describe_scope(s))} <code>{escape(s)}</code></label>"
        for s in scopes
    )
    picker = _patient_picker(patients, patient_query, patient) if need_patient else ""
    body = f"""
<h1>Allow access?</h1>
<p>Signed in as <strong>{escape(username)}</strong>.
<strong>{escape(client_name)}</strong> asks for the permissions below; untick any you do not want to give.</p>
{_error(error)}
<form method="post" action="authorize">
{_hidden(SESSION_FIELD, session)}
<fieldset><legend>Permissions</legend>
{boxes}
</fieldset>
{picker}
<button type="submit" name="action" value="approve">Allow</button>
<button type="submit" name="action" value="deny" formnovalidate>Deny</button>
</form>"""
    return _page("Allow access", body, status)


def _patient_picker(patients: Sequence[tuple[str, str]], query: str, chosen: str) -> str:
    radios = "\n".join(
        f'<label><input type="radio" name="patient" value="{escape(pid)}"{" checked" if pid == chosen else ""}> '
        f"{escape(name)} <code>Patient/{escape(pid)}</code></label>"
        for pid, name in patients
    ) or '<p class="hint">No patients found.</p>'
    return f"""
<fieldset><legend>Patient</legend>
<label for="patient_query">Find patients by name</label>
<input type="text" id="patient_query" name="patient_query" value="{escape(query)}">
<button type="submit" name="action" value="search" formnovalidate>Find</button>
{radios}
<label for="patient_id">Or enter a Patient id</label>
<input type="text" id="patient_id" name="patient_id" value="">
</fieldset>"""


def error_page(*, error: str, description: str | None, status: int = 400) -> HTMLResponse:
    """For errors that cannot go back to the app: its identity or redirect_uri is not trusted."""
    body = f"""
<h1>Authorization request refused</h1>
<p class="error" role="alert"><code>{escape(error)}</code> {escape(description or "")}</p>
<p>Return to the app and start again.  If this keeps happening, tell the app's developers.</p>"""
    return _page("Authorization request refused", body, status)
