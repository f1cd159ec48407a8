"""Drives the moderators' console (examples/console) in headless Chromium against the example nginx
and the emulator, as a moderator would, and checks what the page shows against the emulator's room.

  python3 tests/console/drive_console.py --url URL --token TOKEN --emulator URL --app APP --room ROOM
      --lua LUA [--screenshots DIR]

Started by tests/lua/test_console.lua, which starts the emulator (with alice, bob, carol and dave in
ROOM) and the example nginx. Prints "ok - ..." per step; exits 1 at the first failed step.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

ap = argparse.ArgumentParser()
for name in ("url", "token", "emulator", "app", "room", "lua"):
    ap.add_argument("--" + name, required=True)
ap.add_argument("--screenshots")
args = ap.parse_args()


def step(text):
    print("ok - " + text, flush=True)


def room_state():
    with urllib.request.urlopen(args.emulator + "/_emulator/state", timeout=10) as r:
        state = json.load(r)
    return state["apps"][args.app]["rooms"][args.room]


def by_testid(driver, testid):
    return driver.find_element(By.CSS_SELECTOR, '[data-testid="%s"]' % testid)


def click(driver, testid):
    # The feed and the lists are redrawn every few seconds: find the control again if it was.
    for _ in range(5):
        try:
            return by_testid(driver, testid).click()
        except StaleElementReferenceException:
            time.sleep(0.1)
    by_testid(driver, testid).click()


def present(driver, testid):
    return len(driver.find_elements(By.CSS_SELECTOR, '[data-testid="%s"]' % testid)) > 0


def wait(driver, cond, what, seconds=10):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: cond(d))
    except TimeoutException:
        shot = os.path.join(args.screenshots or "/tmp", "console-failure.png")
        driver.save_screenshot(shot)
        print("not ok - " + what + " (page text: %r; screenshot %s)" % (driver.find_element(By.TAG_NAME, "body").text,
                                                                      shot), flush=True)
        sys.exit(1)


def check(cond, what):
    if not cond:
        print("not ok - " + what, flush=True)
        sys.exit(1)
    step(what)


def shoot(driver, name):
    if args.screenshots:
        driver.save_screenshot(os.path.join(args.screenshots, name))


def signed_join(user):
    env = dict(os.environ, RTCADMIN_CALLBACK_SECRET=os.environ["CONSOLE_CALLBACK_SECRET"])
    body = subprocess.run([args.lua, "examples/nginx/sign_callback.lua", "UserJoinRoom", args.app, args.room, user],
                          env=env, check=True, capture_output=True).stdout
    req = urllib.request.Request(args.url + "/rtc/callback", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


opts = Options()
opts.binary_location = "/usr/bin/chromium"
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(args.url + "/console/")
    wait(driver, lambda d: by_testid(d, "token").is_displayed(), "the sign-in form shows")
    shoot(driver, "console-sign-in.png")

    # A wrong token is refused, and the page says so.
    by_testid(driver, "token").send_keys("not-the-token-0000000000")
    click(driver, "sign-in")
    wait(driver, lambda d: "Wrong token" in by_testid(d, "sign-in-error").text, "a wrong token is refused")
    check(not driver.find_element(By.ID, "console").is_displayed(), "a wrong token says so and shows nothing else")

    # The right token, typed and submitted from the keyboard.
    token = by_testid(driver, "token")
    token.clear()
    token.send_keys(args.token + Keys.ENTER)
    wait(driver, lambda d: d.find_element(By.ID, "console").is_displayed(), "signed in")
    check(driver.execute_script("return sessionStorage.getItem('rtcadmin.console.token')") == args.token
          and args.token not in driver.current_url, "the token is in sessionStorage, not in the URL")

    # Pick the room: its users are listed.
    by_testid(driver, "app").send_keys(args.app)
    by_testid(driver, "room").send_keys(args.room + Keys.ENTER)
    wait(driver, lambda d: all(present(d, "user-" + u) for u in ("alice", "bob", "carol", "dave")),
         "the room's users are listed")
    step("the room's four users are listed")
    shoot(driver, "console-room.png")

    # Kick alice: the result names the request, alice leaves the list and the emulator's room.
    click(driver, "kick-alice")
    wait(driver, lambda d: "Kick alice: done (request " in by_testid(d, "result").text, "the kick's result is shown")
    wait(driver, lambda d: not present(d, "user-alice") or "not online" in by_testid(d, "user-alice").text,
         "alice is gone from the online list")
    check("alice" not in room_state()["users"], "kick: alice is out of the emulator's room, the page says done")

    # Ban bob for an hour with the duration picker.
    Select(by_testid(driver, "duration-bob")).select_by_value("3600")
    click(driver, "ban-bob")
    wait(driver, lambda d: "Ban bob: done" in by_testid(d, "result").text, "the ban's result is shown")
    check("bob" in room_state()["banned_users"], "ban: bob is banned at the emulator")
    wait(driver, lambda d: present(d, "unban-bob"), "bob can be unbanned from the page")

    # A refused action: a 7-day mute is beyond the API's range (60..259200 s); the error is shown.
    Select(by_testid(driver, "duration-carol")).select_by_value("604800")
    click(driver, "mute-audio-carol")
    wait(driver, lambda d: "Mute audio of carol failed" in by_testid(d, "result").text, "the refusal is shown")
    result = by_testid(driver, "result")
    check("error" in result.get_attribute("class") and "259200" in result.text,
          "a refused action shows its error and why: " + result.text)
    shoot(driver, "console-error.png")

    # Unban bob from the list of users acted on.
    click(driver, "unban-bob")
    wait(driver, lambda d: "Unban bob: done" in by_testid(d, "result").text, "the unban's result is shown")
    check("bob" not in room_state()["banned_users"], "unban: bob is no longer banned at the emulator")

    # A wave of signed joins makes rule join-wave (examples/rules/raid.lua) ban newcomers: the
    # decisions appear in the feed.
    for i in range(1, 18):
        if signed_join("raider_%02d" % i) != 200:
            check(False, "signed join accepted")
    wait(driver, lambda d: "join-wave" in by_testid(d, "decision-feed").text, "a decision appears in the feed", 20)
    feed = by_testid(driver, "decision-feed").text
    check("ban 1800 s raider_" in feed, "the feed shows the rule, the action and the target: " + feed.splitlines()[0])
    wait(driver, lambda d: " ok" in by_testid(d, "decision-feed").text, "a decision's outcome ok appears in the feed")
    step("the decision feed shows the rule's decisions and their outcomes")
    shoot(driver, "console-feed.png")

    # Phone-sized: everything stays reachable.
    driver.set_window_size(390, 844)
    time.sleep(0.3)
    width = driver.execute_script("return document.documentElement.scrollWidth")
    check(width <= 390, "no horizontal scrolling at 390 px (page width %d)" % width)
    check(by_testid(driver, "kick-carol").is_displayed(), "buttons shown on a phone-sized viewport")
    shoot(driver, "console-phone.png")

    # The keyboard reaches the user buttons.
    reached = set()
    for _ in range(60):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        reached.add(driver.execute_script("return document.activeElement.dataset.testid || ''"))
    check("kick-carol" in reached and "ban-dave" in reached, "Tab reaches every user's buttons")
finally:
    driver.quit()
