"""``import vla_rl_lib`` sets rendering variables only on a Linux machine without a display, and only
those the user left unset (issue 18: no surprises on import)."""
from vla_rl_lib import _headless_defaults

HEADLESS = {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "SDL_VIDEODRIVER": "dummy"}


def test_headless_linux_gets_egl_and_dummy_video():
    env = {}
    _headless_defaults(env, "linux")
    assert env == HEADLESS


def test_a_display_is_left_alone():
    for display in ({"DISPLAY": ":0"}, {"WAYLAND_DISPLAY": "wayland-0"}):
        env = dict(display)
        _headless_defaults(env, "linux")
        assert env == display


def test_other_systems_are_left_alone():
    for platform in ("darwin", "win32"):
        env = {}
        _headless_defaults(env, platform)
        assert env == {}


def test_user_choices_are_kept():
    env = {"MUJOCO_GL": "glfw", "SDL_VIDEODRIVER": "x11"}
    _headless_defaults(env, "linux")
    assert env == {"MUJOCO_GL": "glfw", "SDL_VIDEODRIVER": "x11"}  # no PYOPENGL_PLATFORM for glfw
    env = {"MUJOCO_GL": "osmesa"}
    _headless_defaults(env, "linux")
    assert env == {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "SDL_VIDEODRIVER": "dummy"}
