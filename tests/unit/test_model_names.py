import pytest

from serving.model_names import ModelNameError, ModelRef, parse_model_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base", ModelRef("base")),
        ("base:acme", ModelRef("base", "acme")),
        ("base:brand_x-2@3", ModelRef("base", "brand_x-2", "3")),
        ("base:acme@1.2.3", ModelRef("base", "acme", "1.2.3")),
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
        ("", 400),
        (None, 400),
        (42, 400),
        ("base:" + "x" * 300, 400),
    ],
)
def test_invalid_names(name: object, status: int) -> None:
    with pytest.raises(ModelNameError) as e:
        parse_model_name(name, "base")
    assert e.value.status == status


def test_lora_name_is_versioned() -> None:
    assert ModelRef("base", "acme").lora_name("2") == "base:acme@2"
    with pytest.raises(ValueError):
        ModelRef("base").lora_name("1")
