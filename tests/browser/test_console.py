#!/usr/bin/env python3
"""The web console in a real browser: headless Chromium driven by Selenium,
against the real `lucid` binary with authentication on, on a free loopback
port. Run it with tests/browser/run (which says what it needs).

Screenshots of each main view go to target/browser/ (test artifacts).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LUCID_BIN", ROOT / "target" / "debug" / "lucid")).resolve()
ARTIFACTS = ROOT / "target" / "browser"
WAIT = 10  # seconds, for anything the page does after an action

XSS_VALUE = "<img src=x onerror=alert(1)>"
XSS_KEY = 'xss/"><script>alert(2)</script>'


class Node:
    """A `lucid server` made by `lucid init` (authentication on) in a
    temporary directory, listening on a port the OS picks."""

    def __init__(self):
        self.dir = tempfile.TemporaryDirectory(prefix="lucid-browser-")
        path = Path(self.dir.name)
        subprocess.run([BIN, "init"], cwd=path, check=True, capture_output=True)
        config = (path / "lucid.yml").read_text()
        (path / "lucid.yml").write_text(config.replace("port: 7021", "port: 0", 1))
        self.process = subprocess.Popen(
            [BIN, "--config", "lucid.yml", "server"],
            cwd=path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 15
        self.port = None
        while self.port is None and time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
        if self.port is None:
            self.stop()
            raise RuntimeError("lucid did not start")
        self.base = f"http://127.0.0.1:{self.port}"

    def token(self, *scopes, prefix=None):
        args = [BIN, "--config", "lucid.yml", "tokens", "issue", "--expires", "1h"]
        for scope in scopes:
            args += ["--scope", scope]
        if prefix:
            args += ["--prefix", prefix]
        out = subprocess.run(args, cwd=self.dir.name, check=True, capture_output=True, text=True)
        return out.stdout.strip().splitlines()[-1]

    def request(self, method, key, body=None, token=None, content_type="text/plain"):
        """Changes or reads a key as another client would (curl's part)."""
        url = self.base + "/api/kv/" + urllib.request.quote(key, safe="")
        data = body.encode() if isinstance(body, str) else body
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", "Bearer " + (token or self.root))
        if body is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def stop(self):
        self.process.kill()
        self.process.wait()
        self.dir.cleanup()


def chromium():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Console(unittest.TestCase):
    """Each test starts signed in as root on the keys view, unless it signs
    in otherwise."""

    @classmethod
    def setUpClass(cls):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        cls.node = Node()
        cls.node.root = cls.node.token("read", "write", "admin")
        cls.browser = chromium()

    @classmethod
    def tearDownClass(cls):
        cls.browser.quit()
        cls.node.stop()

    # --- helpers ---------------------------------------------------------

    def wait_for(self, condition, what):
        wait = WebDriverWait(self.browser, WAIT, ignored_exceptions=[StaleElementReferenceException])
        return wait.until(lambda _: condition(), message=what)

    def find(self, css):
        return self.browser.find_element(By.CSS_SELECTOR, css)

    def found(self, css):
        return self.browser.find_elements(By.CSS_SELECTOR, css)

    def visible(self, css):
        return [e for e in self.found(css) if e.is_displayed()]

    def open_console(self, token):
        """A fresh tab state: the console, signed out, then signed in."""
        # Cleared from a console page: a JSON page would make the browser
        # ask for /favicon.ico (the console names its own icon), a 404.
        self.browser.get(self.node.base + "/ui/")
        # A page that finds a token signs in with it after a request to the
        # node, and only then stores it: clearing before that settles would
        # let the page store the token again behind our back.
        self.wait_for(lambda: self.find("#view-signin").is_displayed()
                      or self.find("#signout").is_displayed(), "the page to settle")
        self.browser.execute_script("sessionStorage.clear()")
        self.browser.get(self.node.base + "/ui/")
        self.wait_for(lambda: self.find("#view-signin").is_displayed(), "the sign-in form")
        self.find("#signin-token").send_keys(token)
        self.find("#signin-button").click()
        self.wait_for(lambda: self.find("#view-keys").is_displayed(), "the key browser")

    def browse(self, prefix):
        box = self.find("#search-prefix")
        box.clear()
        box.send_keys(prefix)
        self.find("#search-form button[type=submit]").click()

    def row(self, key):
        rows = [r for r in self.found("#key-rows tr") if r.get_attribute("data-key") == key]
        return rows[0] if rows else None

    def open_key(self, key):
        self.browse(key.rsplit("/", 1)[0] + "/")
        self.wait_for(lambda: self.row(key), f"the row of {key}")
        self.row(key).click()
        self.wait_for(lambda: self.found("#value-pane h3") and self.find("#value-pane h3").text == key,
                      f"the value of {key}")

    def go(self, view):
        self.browser.get(self.node.base + "/ui/#" + view)
        self.wait_for(lambda: self.find("#view-" + view).is_displayed(), f"the {view} view")

    def shot(self, name):
        self.browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))

    def assert_no_alert(self):
        try:
            alert = self.browser.switch_to.alert
            self.fail(f"an alert opened: {alert.text}")
        except NoAlertPresentException:
            pass

    def severe_logs(self):
        return [entry["message"] for entry in self.browser.get_log("browser")
                if entry["level"] == "SEVERE"]

    def setUp(self):
        self.open_console(self.node.root)

    # --- tests -----------------------------------------------------------

    def test_a_page_loads_and_signs_in_with_no_console_errors(self):
        self.browser.get_log("browser")
        self.open_console(self.node.root)
        self.assertIn("read, write, admin", self.find("#who").text)
        self.go("node")
        self.wait_for(lambda: len(self.found("#node-rows tr")) > 5, "the node's figures")
        rows = {r.find_element(By.TAG_NAME, "th").text: r.find_element(By.TAG_NAME, "td").text
                for r in self.found("#node-rows tr")}
        self.assertEqual(rows["Health"], "ok")
        self.assertIn("Fsync time", rows)
        self.wait_for(lambda: self.found("#node-requests tr"), "requests by status")
        self.shot("node")
        self.assertEqual(self.severe_logs(), [])

    def test_create_then_see_it_listed_then_edit(self):
        self.find("#new-key").click()
        name = self.find("#new-key-name")
        name.clear()
        name.send_keys("demo/greeting")
        self.find("#new-key-value").send_keys("hello")
        self.find("#create").click()
        self.wait_for(lambda: self.node.request("GET", "demo/greeting") == (200, "hello"), "the key stored")
        self.open_key("demo/greeting")
        self.assertEqual(self.find("#value-pane pre.value").text, "hello")
        editor = self.find("#edit-value")
        editor.clear()
        editor.send_keys("hello, edited")
        self.find("#save").click()
        self.wait_for(lambda: "Saved as version" in self.find("#edit-result").text, "the save")
        self.assertEqual(self.node.request("GET", "demo/greeting"), (200, "hello, edited"))
        self.shot("keys")

    def test_a_conflicting_edit_says_so_and_offers_reload(self):
        self.node.request("PUT", "demo/conflict", "first")
        self.open_key("demo/conflict")
        self.assertEqual(self.node.request("PUT", "demo/conflict", "changed outside")[0], 200)
        editor = self.find("#edit-value")
        editor.clear()
        editor.send_keys("mine")
        self.find("#save").click()
        self.wait_for(lambda: self.found("#conflict"), "the conflict")
        self.assertIn("changed by someone else", self.find("#conflict").text)
        self.assertEqual(self.node.request("GET", "demo/conflict"), (200, "changed outside"))
        self.shot("conflict")
        self.find("#reload").click()
        self.wait_for(lambda: self.found("#edit-value")
                      and self.find("#edit-value").get_attribute("value") == "changed outside",
                      "the reloaded value")

    def test_a_put_made_outside_shows_in_the_live_feed_within_2_s(self):
        self.go("feed")
        box = self.find("#feed-prefix")
        box.clear()
        box.send_keys("live/")
        self.find("#feed-form button").click()
        self.wait_for(lambda: self.find("#feed-state").text == "watching", "the feed to open")
        self.node.request("PUT", "live/door", "open")
        WebDriverWait(self.browser, 2).until(
            lambda _: any("live/door" in r.text for r in self.found("#feed-rows tr")),
            message="the change in the feed within 2 s")
        self.assertIn("open", self.find("#feed-rows tr").text)
        self.shot("feed")

    def test_a_numeric_key_updated_20_times_draws_20_points(self):
        # Ten before the chart opens (they come from the node's history),
        # ten while it is open.
        for reading in range(10):
            self.node.request("PUT", "sensors/pi-1/temp", str(20 + reading / 10))
        self.go("charts")
        box = self.find("#chart-keys")
        box.clear()
        box.send_keys("sensors/")
        self.find("#chart-form button").click()
        points = 'g.series[data-key="sensors/pi-1/temp"] circle.point'
        self.wait_for(lambda: len(self.found(points)) == 10, "the ten readings from the history")
        for reading in range(10, 20):
            self.node.request("PUT", "sensors/pi-1/temp", str(20 + reading / 10))
        self.wait_for(lambda: len(self.found(points)) == 20, "twenty points")
        time.sleep(0.3)
        self.assertEqual(len(self.found(points)), 20)
        self.assertIn("sensors/pi-1/temp (20 points, last 21.9)", self.find("#chart-legend").text)
        self.shot("charts")

    def test_stored_markup_stays_inert_everywhere(self):
        self.go("feed")
        box = self.find("#feed-prefix")
        box.clear()
        box.send_keys("xss/")
        self.find("#feed-form button").click()
        self.wait_for(lambda: self.find("#feed-state").text == "watching", "the feed to open")
        self.node.request("PUT", XSS_KEY, XSS_VALUE, content_type="text/html")
        self.node.request("PUT", "xss/<b>n</b>", "42")
        self.wait_for(lambda: len(self.found("#feed-rows tr")) == 2, "both changes in the feed")
        self.assertIn(XSS_KEY, self.find("#feed-rows").text)
        self.assertIn(XSS_VALUE, self.find("#feed-rows").text)
        self.go("keys")
        self.open_key(XSS_KEY)
        self.assertEqual(self.find("#value-pane pre.value").text, XSS_VALUE)
        self.assertEqual(self.find("#value-pane h3").text, XSS_KEY)
        self.go("charts")
        box = self.find("#chart-keys")
        box.clear()
        box.send_keys("xss/")
        self.find("#chart-form button").click()
        self.wait_for(lambda: "xss/<b>n</b>" in self.find("#chart-legend").text, "the chart's label")
        self.assert_no_alert()
        self.assertEqual(self.found("img[src=x]"), [])
        self.assertEqual(self.found("main script, main b"), [])

    def test_images_show_as_images_and_other_bytes_as_hex(self):
        # A 1x1 PNG.
        png = bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201f5"
            "8f1c6a0000000049454e44ae426082")
        self.node.request("PUT", "files/dot.png", png, content_type="image/png")
        self.node.request("PUT", "files/blob.bin", b"\x00\x01\xff", content_type="application/octet-stream")
        self.open_key("files/dot.png")
        image = self.find("#value-pane img.value")
        self.wait_for(lambda: self.browser.execute_script("return arguments[0].naturalWidth", image) == 1,
                      "the image decoded from its blob URL")
        # An SVG may carry script: shown as text, never as an image whose
        # blob URL could be opened as a page of the node's origin.
        svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
        self.node.request("PUT", "files/evil.svg", svg, content_type="image/svg+xml")
        self.open_key("files/evil.svg")
        self.assertEqual(self.find("#value-pane pre.value").text, svg)
        self.assertEqual(self.found("#value-pane img"), [])
        self.assert_no_alert()
        self.open_key("files/blob.bin")
        self.assertEqual(self.find("#value-pane pre.hex").text, "00000000  00 01 ff")
        link = self.find("#value-pane a[download]")
        self.assertEqual(link.get_attribute("download"), "blob.bin")
        self.assertTrue(link.get_attribute("href").startswith("blob:"))
        self.assertEqual(self.severe_logs(), [])

    def test_a_read_only_token_gets_no_write_controls(self):
        self.node.request("PUT", "demo/readonly", "7")
        self.open_console(self.node.token("read"))
        self.assertFalse(self.find("#new-key").is_displayed())
        self.open_key("demo/readonly")
        self.assertEqual(self.find("#value-pane pre.value").text, "7")
        for control in ("#save", "#delete", "#lock", "#set-ttl", "#clear-ttl", "#increment", "#edit-value"):
            self.assertEqual(self.found(control), [], control)


if __name__ == "__main__":
    sys.exit(unittest.main(verbosity=2))
