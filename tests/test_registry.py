"""One registry pattern: models, datasets, passport kinds, branch kinds, attacks, comparison schemes and
remote protocols are each a Registry filled by decorators next to the implementations, loaded on first use."""

import subprocess
import sys

import pytest

from passportnorm.attacks.registry import ATTACKS
from passportnorm.baselines.schemes import COMPARE_SCHEMES, SCHEMES
from passportnorm.branch import BRANCH_KINDS
from passportnorm.data.registry import DATASETS
from passportnorm.errors import ConfigError, DatasetError, OwnerKeyError, PassportError
from passportnorm.passports import PASSPORTS, RandomPassports
from passportnorm.registry import Registry
from passportnorm.remote.protocols import PROTOCOLS
from passportnorm.zoo.registry import MODELS

REGISTRIES = [
    (MODELS, "resnet18", ConfigError, "unknown model 'nope'; choose one of"),
    (DATASETS, "mnist5k", DatasetError, "unknown dataset 'nope'; choose one of"),
    (PASSPORTS, "shuffle", PassportError, "unknown passport kind 'nope'; choose one of random, image, shuffle"),
    (BRANCH_KINDS, "deepipr-v2", OwnerKeyError, "unknown branch kind 'nope'; choose one of"),
    (ATTACKS, "fine-prune", ConfigError, "unknown attack 'nope'; choose one of"),
    (SCHEMES, "pan", ConfigError, "unknown comparison scheme 'nope'; choose one of plain, deepipr-v1"),
    (PROTOCOLS, "torchserve", ConfigError, "unknown protocol 'nope'; choose one of v2, torchserve, template"),
]


@pytest.mark.parametrize("registry,known,error,message", REGISTRIES, ids=lambda v: getattr(v, "what", None))
def test_each_registry_finds_its_entries_and_names_the_choices_for_an_unknown_one(registry, known, error, message):
    assert isinstance(registry, Registry) and known in registry.names() and registry[known] is not None
    with pytest.raises(error, match=message):
        registry["nope"]


def test_register_is_a_decorator_that_returns_the_implementation_and_keeps_traits():
    things = Registry("thing", hint="or write your own")

    @things.register("b", task="image")
    def build_b():
        return "b"

    things.register("a")(str)
    assert build_b() == "b" and things["b"] is build_b and things.traits("b") == {"task": "image"}
    assert things.names() == ["b", "a"]  # registration order; callers sort where imports may vary
    with pytest.raises(ConfigError, match="unknown thing 'c'; choose one of b, a, or write your own"):
        things.check("c")


def test_registries_hold_what_the_tool_documents():
    assert PASSPORTS["random"] is RandomPassports
    assert COMPARE_SCHEMES == ("plain", "deepipr-v1", "deepipr-v2", "pan")  # the comparison's row order
    assert {SCHEMES[s].schedule for s in COMPARE_SCHEMES} == {"alternate", "aware", "joint"}
    assert set(ATTACKS.names()) >= {"finetune", "prune", "forge", "reprotect", "combined"}
    assert MODELS.traits("pointnet") == {"task": "pointcloud"} and DATASETS.traits("digits") == {"task": "image"}


def test_branch_kinds_of_the_baselines_load_on_first_use_without_a_side_effect_import():
    """`import passportnorm` no longer imports the baselines; a key naming a DeepIPR branch still finds it."""
    code = (
        "import sys, passportnorm\n"
        "assert 'passportnorm.baselines.deepipr' not in sys.modules\n"
        "from passportnorm.branch import BRANCH_KINDS\n"
        "assert 'deepipr-v1' in BRANCH_KINDS and 'passportnorm.baselines.deepipr' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_literal_option_types_name_exactly_what_the_registries_hold():
    from passportnorm.choices import NormKind, PassportKind, Task, words
    from passportnorm.zoo.norms import NORM_KINDS
    from passportnorm.zoo.registry import TASKS

    assert words(PassportKind) == tuple(PASSPORTS.names())
    assert words(NormKind) == NORM_KINDS and words(Task) == TASKS


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: __import__("passportnorm.pipeline").pipeline.RunOptions.from_mapping({"schedule": "joined"}),
         "unknown schedule 'joined'; choose alternate, joint, aware, interleave, auto"),
        (lambda: __import__("passportnorm.pipeline").pipeline.RunOptions.from_mapping({"passports": "shufle"}),
         "unknown passports 'shufle'; choose random, image, shuffle"),
        (lambda: __import__("passportnorm.train").train.TrainConfig(precision="fp8").validate(),
         "unknown precision 'fp8'; choose fp32, bf16, fp16"),
    ],
)
def test_a_misspelt_word_option_is_one_line_naming_it_and_its_words(build, message):
    with pytest.raises(ConfigError, match=message):
        build()
