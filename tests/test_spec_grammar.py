"""One spec grammar (torch_isda.utils.spec_grammar) behind criterion specs (--loss) and
augmentation specs (--augment), and one registry helper (torch_isda.utils.registry)
behind the dataset and model registries."""

from __future__ import annotations

import pytest
import torch

from torch_isda.data import build_augment, create_dataset, dataset_entrypoint, register_dataset
from torch_isda.data.registry import is_dataset, list_datasets
from torch_isda.models import create_model, list_models, register_model
from torch_isda.models.registry import is_model, model_entrypoint
from torch_isda.train.criteria import parse_criterion_spec
from torch_isda.utils.registry import Registry
from torch_isda.utils.spec_grammar import key_value_items, match_term, split_top_level

# ---------------------------------------------------------------------------- grammar


def test_split_top_level_ignores_separators_inside_brackets():
    assert split_top_level("a(b=1,c=(2,3))+d[e+f]+{g,h}", "+") == ["a(b=1,c=(2,3))", "d[e+f]", "{g,h}"]
    assert split_top_level("b=1,c=(2,3),d=[4,5]", ",") == ["b=1", "c=(2,3)", "d=[4,5]"]
    assert split_top_level("", ",") == [""]
    for bad in ("a(", "a)", "a(b))(", "x[("):
        with pytest.raises(ValueError, match=r"unbalanced parentheses in augmentation spec"):
            split_top_level(bad, "+", "augmentation spec")


def test_match_term_and_key_value_items():
    assert match_term(" isda ( lambda0 = 1 ) ") == ("isda", " lambda0 = 1 ")
    assert match_term("dropout") == ("dropout", None)
    assert match_term("Crop_2()") == ("Crop_2", "")
    for bad in ("1abc", "", "a b", "a(b)c"):
        assert match_term(bad) is None
    assert key_value_items(" a = 1 ,, b=(2, 3) ", "S", "things") == [("a", "1"), ("b", "(2, 3)")]
    assert key_value_items("k=a=b", "S", "things") == [("k", "a=b")]
    with pytest.raises(ValueError, match=r"^things must be key=value; got 'x' in 'S'$"):
        key_value_items("a=1, x", "S", "things")


def test_criterion_specs_use_the_grammar():
    assert parse_criterion_spec("ISDA(lambda0=0.75, kind=diagonal)+dropout(p=(0.1))") == [
        ("isda", {"lambda0": 0.75, "kind": "diagonal"}), ("dropout", {"p": 0.1})]
    assert parse_criterion_spec("x(a=true,b=None,c=[1,2],d=two words)") == [
        ("x", {"a": True, "b": None, "c": [1, 2], "d": "two words"})]
    with pytest.raises(ValueError, match=r"^criterion arguments must be key=value; got 'y' in 'x\(y\)'$"):
        parse_criterion_spec("x(y)")
    with pytest.raises(ValueError, match=r"^cannot parse '1abc' in criterion spec '1abc\+ce'; expected"):
        parse_criterion_spec("1abc+ce")
    with pytest.raises(ValueError, match=r"^unbalanced parentheses in criterion spec 'isda\('$"):
        parse_criterion_spec("isda(")


def test_augmentation_specs_use_the_grammar():
    aug = build_augment("crop(padding=1, pad_mode=zeros)+cutout(size=4,holes=2)")
    assert (aug.padding, aug.pad_mode, aug.cutout.size, aug.cutout.holes) == (1, "zeros", 4, 2)
    # a '+' inside a term's parentheses does not split the spec
    assert build_augment("cutout(size=+4)").cutout.size == 4
    with pytest.raises(ValueError, match=r"^augmentation options must be key=value; got 'x' in"):
        build_augment("cutout(size=4,x)")
    with pytest.raises(ValueError, match=r"^invalid value 'zero s' for crop\(pad_mode=\.\.\.\)"):
        build_augment("crop(pad_mode=zero s)")
    # options are numbers or words: a tuple is one clear error, not a TypeError later
    with pytest.raises(ValueError, match=r"^invalid value '\(1,2\)' for crop\(padding=\.\.\.\)"):
        build_augment("crop(padding=(1,2))")
    with pytest.raises(ValueError, match=r"^unknown augmentation 'crop\('; choose one of"):
        build_augment("crop(")
    with pytest.raises(ValueError, match=r"^unknown augmentation 'foo\(x\)\+crop'"):
        build_augment("foo(x)+crop")  # an unknown term is reported before its options


# ---------------------------------------------------------------------------- registry


def _factory_a():
    return "a"


def _factory_b():
    return "b"


def test_registry_helper():
    reg = Registry("widget")
    assert reg.register("alpha", _factory_a) is _factory_a
    reg.register("beta", _factory_b)
    reg.register("alpha", _factory_a)  # the same function again (a reload) replaces it
    assert reg.names() == ["alpha", "beta"] and reg.names("b*") == ["beta"]
    assert "alpha" in reg and "gamma" not in reg and reg.get("beta") is _factory_b
    with pytest.raises(ValueError, match=r"^widget 'alpha' is already registered by .*_factory_a$"):
        reg.register("alpha", _factory_b)
    with pytest.raises(ValueError, match=r"^Unknown widget 'alpah'\. Did you mean 'alpha'\? "
                                         r"Available widgets: alpha, beta\.$"):
        reg.get("alpah")
    with pytest.raises(ValueError, match=r"^Unknown widget 7\. Available widgets: alpha, beta\.$"):
        reg.get(7)


def test_dataset_and_model_registries_share_the_helper():
    assert "digits" in list_datasets() and is_dataset("digits") and not is_dataset("digitz")
    assert "resnet32" in list_models() and is_model("resnet32") and list_models("nothing*") == []
    with pytest.raises(ValueError, match=r"^Unknown dataset 'digitz'\. Did you mean 'digits'\?"):
        dataset_entrypoint("digitz")
    with pytest.raises(ValueError, match=r"^Unknown model 'resnet3'\. Did you mean"):
        model_entrypoint("resnet3")
    with pytest.raises(ValueError, match=r"^dataset 'digits' is already registered by "
                                         r"torch_isda\.data\.digits\.digits$"):
        register_dataset("digits")(_factory_a)
    with pytest.raises(ValueError, match=r"^dataset names must be non-empty and lower-case"):
        register_dataset("Digits")(_factory_a)

    def Upper(num_classes):  # noqa: N802
        return None

    with pytest.raises(ValueError, match=r"^model names must be lower-case, got 'Upper'$"):
        register_model(Upper)
    assert create_dataset("digits").name == "digits"
    assert create_model("resnet20", 10, in_chans=1)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
