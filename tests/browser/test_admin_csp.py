"""The admin in a real browser under its Content-Security-Policy: nothing is blocked, the scripts still run."""

import pytest

from tests.auth_fixtures import PASSWORD, totp_code

pytestmark = pytest.mark.django_db(transaction=True)

# Injected by Playwright outside the page's policy; records what the policy blocks.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(event.violatedDirective + " " + (event.blockedURI || "inline"));
});
"""


def test_the_admin_works_under_its_policy_without_a_single_violation(page, live_server, superadmin, superadmin_device):
    page.add_init_script(RECORD_VIOLATIONS)
    console_errors = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))

    response = page.goto(f"{live_server.url}/admin/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.fill("#id_username", superadmin.username)
    page.fill("#id_password", PASSWORD)
    page.fill("#id_otp_token", totp_code(superadmin_device))
    page.click("input[type=submit]:not([name=otp_challenge])")
    page.wait_for_selector("#user-tools")

    violations = []
    for path in ("/admin/", "/admin/providers/providerconfig/", "/admin/providers/providerconfig/add/"):
        page.goto(f"{live_server.url}{path}")
        page.wait_for_load_state("load")
        violations += page.evaluate("window.__cspViolations")

    # The admin's own scripts ran: the sidebar toggle and the provider form's button are wired up.
    page.click("#toggle-nav-sidebar")
    assert page.get_attribute("#main", "class") and "shifted" not in page.get_attribute("#main", "class")
    page.click("#test-credentials")
    page.wait_for_selector("#test-credentials-result.test-failed")

    violations += page.evaluate("window.__cspViolations")
    assert violations == []
    assert not [text for text in console_errors if "Content Security Policy" in text]
