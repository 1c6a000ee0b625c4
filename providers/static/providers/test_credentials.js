// "Test credentials" on the provider form: sends what is typed to the server, shows the answer, saves nothing.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const button = document.getElementById("test-credentials");
  if (!button) {
    return;
  }
  const result = document.getElementById("test-credentials-result");
  button.addEventListener("click", async function () {
    const form = button.closest("form");
    result.textContent = "Testing…";
    result.className = "test-pending";
    try {
      const response = await fetch(button.dataset.url, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
      });
      // A server error page is HTML, not JSON: say what happened instead of a JSON parse error.
      if (!(response.headers.get("Content-Type") || "").includes("application/json")) {
        throw new Error("the server answered " + response.status + " " + response.statusText);
      }
      const body = await response.json();
      let text = body.ok ? "OK: " + body.message : "Failed" + (body.error_type ? " (" + body.error_type + ")" : "") + ": " + body.message;
      if (body.errors) {
        text += " " + Object.entries(body.errors).map(([name, errs]) => name + ": " + errs.map((e) => e.message).join(" ")).join("; ");
      }
      result.textContent = text;
      result.className = body.ok ? "test-ok" : "test-failed";
    } catch (error) {
      result.textContent = "The test could not be run: " + error;
      result.className = "test-failed";
    }
  });
});
