"""The one rule for sliding-window requests (``jedi infer --window`` and ``?window=``)."""
import pytest

from jedi_deploy.contracts.errors import ConfigError
from jedi_deploy.serve.config import DEFAULT_STRIDE, MAX_SMOOTH, MAX_WINDOW_S, WindowSpec


def test_defaults_and_strings():
    assert WindowSpec.parse(4) == WindowSpec(4.0, 4 * DEFAULT_STRIDE, 1)
    assert WindowSpec.parse("8", "2", "3", option="") == WindowSpec(8.0, 2.0, 3)
    assert WindowSpec.parse(2, "", "") == WindowSpec(2.0, 1.0, 1)  # empty form fields = not given
    assert WindowSpec.parse(MAX_WINDOW_S, MAX_WINDOW_S, MAX_SMOOTH).window == MAX_WINDOW_S


@pytest.mark.parametrize("args, needle", [
    ((0,), "--window and --stride must be > 0"),
    ((-1, 1), "must be > 0"),
    ((1, 0), "must be > 0"),
    ((float("nan"),), "must be > 0"),
    ((float("inf"),), "must be > 0"),
    ((2, 3), "--stride 3 s is longer than --window 2 s"),
    ((MAX_WINDOW_S + 1,), "longer than the longest window"),
    ((4, 2, 0), "--smooth must be 1..99"),
    ((4, 2, MAX_SMOOTH + 1), "--smooth must be 1..99"),
    (("four",), "must be seconds"),
    ((4, 2, "2.5"), "whole number of windows"),
])
def test_every_bad_value_is_one_error_naming_the_option(args, needle):
    with pytest.raises(ConfigError, match=needle):
        WindowSpec.parse(*args)


def test_http_names_drop_the_dashes():
    with pytest.raises(ConfigError, match=r"^stride 5 s is longer than window 1 s"):
        WindowSpec.parse(1, 5, option="")
