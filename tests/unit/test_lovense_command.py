"""How an activation snapshot becomes a Lovense command (models/services/lovense_api.py `build_command`)."""
import pytest

from models.services.lovense_api import STOP, InvalidActivation, build_command, played_ms


def spec(**changes):
    base = {"device_type": "vibrator", "pattern": "steady", "intensity": 10, "duration_ms": 3000}
    base.update(changes)
    return base


def test_steady_vibrator_is_a_function_command():
    """A steady vibrator runs `Vibrate:N` for the duration in seconds."""
    assert build_command(spec()) == {"command": "Function", "action": "Vibrate:10", "timeSec": 3, "apiVer": 1}


@pytest.mark.parametrize("device,intensity,action", [
    ("vibrator", 25, "Vibrate:20"),
    ("vibrator", -3, "Vibrate:0"),
    ("pump", 0, "Pump:0"),
    ("pump", 1, "Pump:1"),
    ("pump", 7, "Pump:2"),
    ("pump", 14, "Pump:3"),
    ("pump", 20, "Pump:3"),
    ("pump", 99, "Pump:3"),
    ("all", 10, "All:10"),
    ("all", 40, "All:20"),
])
def test_actions_per_device_with_clamping_and_pump_scaling(device, intensity, action):
    """Intensity is clamped to 0..20; the pump gets ceil(N * 3 / 20), so any positive intensity moves it."""
    assert build_command(spec(device_type=device, intensity=intensity))["action"] == action


@pytest.mark.parametrize("pattern", [None, "", "steady", "custom"])
def test_steady_custom_and_missing_pattern_are_functions(pattern):
    """No pattern means steady; custom runs the item's actions steadily."""
    command = build_command(spec(pattern=pattern))
    assert command["command"] == "Function" and command["action"] == "Vibrate:10"


@pytest.mark.parametrize("pattern", ["pulse", "wave", "fireworks", "earthquake"])
def test_lovense_presets_are_presets_without_intensity(pattern):
    """A preset names the pattern and sends no action (Lovense's own curve)."""
    command = build_command(spec(device_type="all", pattern=pattern, intensity=20, duration_ms=500))
    assert command == {"command": "Preset", "name": pattern, "timeSec": 2, "apiVer": 1}


@pytest.mark.parametrize("ms,seconds", [(1, 2), (999, 2), (1000, 2), (1001, 2), (2000, 2), (2001, 3), (2500, 3),
                                        (60000, 60)])
def test_time_rounds_up_to_whole_seconds_at_least_two(ms, seconds):
    """timeSec is duration_ms rounded up, at least 2 (Lovense: 0 = forever, otherwise more than 1), and the slot on
    the timeline is exactly that long."""
    assert build_command(spec(duration_ms=ms))["timeSec"] == seconds
    assert played_ms(spec(duration_ms=ms)) == seconds * 1000


@pytest.mark.parametrize("device,features", [("vibrator", "v"), ("pump", "p"), ("all", "vrp")])
def test_custom_with_strengths_is_a_pattern(device, features):
    command = build_command(spec(device_type=device, pattern="custom", strengths=[20, 10, 5, 25], interval_ms=500))
    assert command == {"command": "Pattern", "rule": f"V:1;F:{features};S:500#", "strength": "20;10;5;20",
                       "timeSec": 3, "apiVer": 2}
    assert build_command(spec(pattern="custom", strengths=[3]))["rule"] == "V:1;F:v;S:1000#"


def test_stop_is_a_function_stop():
    assert STOP == {"command": "Function", "action": "Stop", "timeSec": 0, "apiVer": 1}


@pytest.mark.parametrize("changes", [
    {"device_type": "laser"},
    {"device_type": None},
    {"pattern": "zigzag"},
    {"intensity": None},
    {"intensity": "5"},
    {"intensity": 5.0},
    {"intensity": True},
    {"duration_ms": False},
    {"duration_ms": True},
    {"duration_ms": 0},
    {"duration_ms": -1000},
    {"duration_ms": 1500.0},
    {"pattern": "pulse", "intensity": True},
])
def test_invalid_snapshots_are_refused(changes):
    """Unknown device or pattern, non-integer (or bool) intensity or duration, or a duration <= 0 raise
    InvalidActivation (a ValueError), presets included."""
    with pytest.raises(InvalidActivation):
        build_command(spec(**changes))
    assert issubclass(InvalidActivation, ValueError)
