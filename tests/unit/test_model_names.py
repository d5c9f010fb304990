import pytest

from adapters.stack import StackPart
from federation.model_names import ModelNameError, ModelRef, UnknownModel, parse_model_name
from serving.errors import status_of


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base", ModelRef("base")),
        ("base:acme", ModelRef("base", (StackPart("acme"),))),
        ("base:brand_x-2@3", ModelRef("base", (StackPart("brand_x-2", "3"),))),
        ("base:acme@1.2.3", ModelRef("base", (StackPart("acme", "1.2.3"),))),
        (
            "base:rm+acme@2+bx*0.5",
            ModelRef("base", (StackPart("rm"), StackPart("acme", "2"), StackPart("bx", None, 0.5))),
        ),
    ],
)
def test_valid_names(name: str, expected: ModelRef) -> None:
    assert parse_model_name(name, "base") == expected


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("gpt-4o", 404),
        ("other:acme", 404),
        ("base:", 400),
        ("base:../etc/passwd", 400),
        ("base:/abs", 400),
        ("base:Acme", 400),
        ("base:acme@", 400),
        ("base:acme@v1", 400),
        ("base:a:b", 400),
        ("base:" + "a" * 65, 400),
        ("base:acme\n", 400),
        ("base:a+a", 400),
        ("base:a+", 400),
        ("base:a*-1", 400),
        ("base:a*0", 400),
        ("", 400),
        (None, 400),
        (42, 400),
        ("base:" + "x" * 700, 400),
    ],
)
def test_invalid_names(name: object, status: int) -> None:
    with pytest.raises((ModelNameError, UnknownModel)) as e:
        parse_model_name(name, "base")
    assert status_of(e.value) == status  # the answer the error model gives it


def test_canonical_name() -> None:
    assert parse_model_name("base:a*1+b@2*0.50", "base").name() == "base:a+b@2*0.5"
    assert parse_model_name("base", "base").name() == "base"
