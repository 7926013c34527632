"""JupyterLab in a real browser: what a student sees works, end to end.

A JupyterLab server on a random localhost port (token auth, no browser of its own) serves a copy
of the notebooks with ``VLA_RL_SMOKE=1`` (every notebook's ``smoke`` parameter), and headless
Debian Chromium, driven through ChromeDriver, does what a student does:

1. opens ``00_quickstart`` and ``06_ppo``, runs all cells, and checks that the live reward plot
   changes while training runs, the final plot is there, and the rollout video loads and plays;
2. opens the hyperparameter panel, moves a slider, presses Run, and sees training start and the plot update;
3. moves the rollout player's slider and sees the frame, the instruction and the action change;
4. answers the method chooser's questions and gets the specification's recommendation.

Screenshots of every step are saved in ``test-artifacts/browser/`` (``$VLA_RL_BROWSER_ARTIFACTS``);
a failing step names its screenshot. Without Chromium the test is skipped with the reason.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from browser_lab import (ARTIFACTS, LabServer, Step, cell_errors, make_driver, missing_browser, open_notebook,
                         run_all, wait_all_done)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
_missing = missing_browser()
if _missing:
    pytest.skip(_missing, allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    shutil.rmtree(ARTIFACTS, ignore_errors=True)          # screenshots of this run only
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    server = LabServer(root, env={"VLA_RL_SMOKE": "1"})
    yield server
    server.stop()


@pytest.fixture
def driver():
    d = make_driver()
    yield d
    d.quit()


def _images(driver):
    """Output images of the visible notebook, in document order."""
    return driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img")


def _run_and_watch_plot(driver, step: Step, timeout: float) -> None:
    """Run all cells; while they run, screenshot every output plot repeatedly until one of them changes.

    Every plot is watched (a notebook may train more than once, and a short smoke run can finish
    between two looks at the first plot); a plot replaced while we looked is simply looked at again."""
    run_all(driver)
    deadline = time.time() + timeout
    firsts: dict[int, bytes] = {}
    changed = False
    while time.time() < deadline and not changed:
        for index, image in enumerate(_images(driver)):
            try:
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", image)
                png = image.screenshot_as_png
            except Exception:  # noqa: BLE001 - the image was replaced while we looked: look again
                continue
            if index not in firsts:
                firsts[index] = png
                step.shot(f"plot{index}-first", png=png)
            elif png != firsts[index]:
                changed = True
                step.shot(f"plot{index}-later", png=png)
                break
        if not changed and not driver.execute_script(
                "return document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-InputPrompt').length"):
            break
        time.sleep(0.25)
    step.check(changed, "the live reward plot never changed while training ran")


def _check_video_plays(driver, step: Step) -> None:
    videos = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) video")
    step.check(bool(videos), "no rollout video element in the outputs")
    video = videos[-1]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", video)
    ok = driver.execute_script("""
        const v = arguments[0];
        return new Promise(resolve => {
            const t0 = performance.now();
            const tick = () => {
                if (v.readyState >= 2 && v.currentTime > 0.05) return resolve(true);
                if (performance.now() - t0 > 15000) return resolve(false);
                setTimeout(tick, 100);
            };
            v.muted = true;
            v.play().catch(() => {});
            tick();
        });""", video)
    step.shot("video", video)
    step.check(ok, "the rollout video did not load and play")


@pytest.mark.parametrize("notebook", ["00_quickstart.ipynb", "06_ppo.ipynb"])
def test_notebook_runs_with_live_plot_and_video(lab, driver, notebook):
    step = Step(driver, f"1-{Path(notebook).stem}")
    open_notebook(driver, lab, f"notebooks/{notebook}")
    step.shot("opened")
    _run_and_watch_plot(driver, step, timeout=300)
    wait_all_done(driver, step, timeout=600)
    step.shot("done")
    errors = cell_errors(driver)
    step.check(not errors, f"cells raised errors: {errors[:2]}")
    step.check(len(_images(driver)) >= 1, "no final plot in the outputs")
    _check_video_plays(driver, step)


def _widget_button(driver, text: str):
    for button in driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets button"):
        if button.text.strip() == text:
            return button
    return None


def _run_cell_source(driver, source: str) -> None:
    """Add a cell at the end, type ``source``, run it with Shift+Enter (as a person would)."""
    from browser_lab import wait_kernel_idle

    from selenium.webdriver.common.action_chains import ActionChains

    prompts = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell .jp-InputPrompt")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", prompts[-1])
    prompts[-1].click()                                   # select the last cell
    actions = ActionChains(driver)
    actions.send_keys(Keys.ESCAPE).pause(0.3).send_keys("b").pause(0.8).send_keys(Keys.ENTER).pause(0.5).perform()
    driver.switch_to.active_element.send_keys(source)     # type into the new cell's editor
    time.sleep(0.3)
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
    time.sleep(1)
    wait_kernel_idle(driver, 300)


def test_hyperparameter_panel_slider_and_run(lab, driver):
    step = Step(driver, "2-hyperparameter-panel")
    open_notebook(driver, lab, "notebooks/06_ppo.ipynb")
    _run_cell_source(driver, "from widgets import HyperparameterPanel\n"
                             "panel = HyperparameterPanel('ppo', env='CartPole-v1', eval_episodes=2, "
                             "overrides={'total_timesteps': 6144, 'log_freq': 512, 'eval_freq': 2048, 'num_envs': 4, 'rollout_steps': 128})\npanel")
    step.shot("panel")
    sliders = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .noUi-handle, "
                                                    ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .ui-slider-handle")
    step.check(bool(sliders), "the panel shows no slider")
    readouts = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-readout")
    before = readouts[0].text if readouts else ""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", sliders[0])
    sliders[0].click()
    sliders[0].send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    time.sleep(1)
    after = readouts[0].text if readouts else ""
    step.shot("slider-moved")
    step.check(before != after, f"moving the slider did not change its value ({before!r})")
    run = _widget_button(driver, "Run")
    step.check(run is not None, "no Run button")
    images_before = len(_images(driver))
    run.click()
    deadline = time.time() + 300
    first = None
    updated = False
    while time.time() < deadline and not updated:
        try:
            imgs = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets img")
            imgs = [i for i in imgs if i.size.get("width", 0) > 100]
            if imgs:
                png = imgs[-1].screenshot_as_png
                first = first or png
                updated = png != first
        except StaleElementReferenceException:  # the live plot redrew while we looked: look again
            pass
        time.sleep(1)
    step.shot("after-run")
    step.check(updated or len(_images(driver)) > images_before, "pressing Run did not start training and update the plot")


def test_rollout_player_slider(lab, driver):
    step = Step(driver, "3-rollout-player")
    open_notebook(driver, lab, "notebooks/06_ppo.ipynb")
    # a simple hand-written driver whose action depends on what it sees (no indented blocks: the
    # editor indents by itself as a person types)
    _run_cell_source(driver, "import numpy as np\nfrom widgets import RolloutPlayer\n"
                             "Agent = type('Agent', (), {'predict': lambda self, obs, deterministic=True: "
                             "np.array([np.tanh(-2 * obs['state'][0]), 0.4 + 0.3 * np.sin(obs['state'][2])], dtype=np.float32)})\n"
                             "player = RolloutPlayer(Agent(), 'driving', seed=3, max_steps=40, show_video=False)\nplayer")
    step.shot("player")
    handle = driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider .noUi-handle")
    step.check(bool(handle), "the rollout player shows no slider")
    info = lambda: driver.execute_script(  # noqa: E731
        "const h = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-html-content');"
        "return Array.from(h).map(e => e.innerText).filter(t => t.includes('step')).pop() || ''")
    frame = lambda: driver.execute_script(  # noqa: E731
        "const i = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jupyter-widgets img');"
        "return i.length ? i[i.length - 1].src.length + ':' + i[i.length - 1].src.slice(-40) : ''")
    before_info, before_frame = info(), frame()
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle[-1])
    handle[-1].click()
    handle[-1].send_keys(*([Keys.ARROW_RIGHT] * 10))
    time.sleep(2)
    after_info, after_frame = info(), frame()
    step.shot("moved")
    step.check("instruction" in after_info, f"no instruction shown: {after_info!r}")
    step.check(after_info != before_info and "action" in after_info, "the step/action text did not change")
    step.check(after_frame != before_frame, "the frame did not change")


def test_method_chooser_recommends_as_the_decision_tree(lab, driver):
    step = Step(driver, "4-method-chooser")
    open_notebook(driver, lab, "notebooks/11_choosing_a_method.ipynb")
    _run_cell_source(driver, "from widgets import MethodChooser\nchooser = MethodChooser()\nchooser")
    step.shot("chooser")

    def answer(*labels):
        for label in labels:
            button = _widget_button(driver, label)
            step.check(button is not None, f"no answer button {label!r}")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
            button.click()
            time.sleep(0.7)
        recommend = _widget_button(driver, "Recommend")
        recommend.click()
        time.sleep(1.5)
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .widget-html-content'))"
            ".map(e => e.innerText).join('\\n')")

    cases = [(("No: only a fixed dataset", "Mixed"), "TD3+BC"),
             (("No: only a fixed dataset", "Diverse"), "DT"),
             (("Yes: a simulator or the real system", "Sample efficient"), "SAC"),
             (("Yes: a simulator or the real system", "Multi-objective"), "GRPO"),
             (("Yes: a simulator or the real system", "Simple and stable"), "PPO")]
    for labels, method in cases:
        text = answer(*labels)
        step.shot(f"answer-{method}")
        step.check(f"Recommended: {method}" in text or f"recommendation: {method}" in text.lower() or
                   f"→ {method}" in text or f"-> {method}" in text,
                   f"after answering {labels} the chooser did not recommend {method}: {text[:300]!r}")
