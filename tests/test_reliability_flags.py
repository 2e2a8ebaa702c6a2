"""Explicit settings override presets, and flags that disagree with a checkpoint are errors, never
silence (the reliability issue's examples: a partial --config over --preset demo, --model against a
run of another family, --model/--variant against a checkpoint folder)."""

from __future__ import annotations

import pytest

from models.cli.commands import build_train_setup
from models.cli.main import main
from models.cli.parser import build_parser, parse_arguments
from models.cli.presets import DEMO_MODEL_CONFIG, DEMO_SPEC
from models.data.synthetic import write_synthetic_coco
from models.dino.config import DinoConfig
from models.engine.training import TrainingArgs, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("flagdata")
    write_synthetic_coco(root, {"train": 4, "val": 2}, DEMO_SPEC, seed=11)
    return root


def _setup(*flags: str):
    return build_train_setup(parse_arguments(build_parser(), ["train", "--data", "d", "--out", "o", *flags]))


def test_a_partial_config_overrides_the_preset_instead_of_replacing_it(tmp_path):
    (tmp_path / "partial.json").write_text('{"num_queries": 10}')
    _, config = _setup("--preset", "demo", "--config", str(tmp_path / "partial.json"))
    assert config.num_queries == 10
    assert (config.backbone, config.d_model, config.num_feature_levels) == (DEMO_MODEL_CONFIG["backbone"], DEMO_MODEL_CONFIG["d_model"], DEMO_MODEL_CONFIG["num_feature_levels"])
    # and a flag overrides both
    _, config = _setup("--preset", "demo", "--config", str(tmp_path / "partial.json"), "--num-queries", "12")
    assert config.num_queries == 12


def test_a_family_s_own_fields_come_with_it_and_flags_still_win():
    _, config = _setup("--preset", "demo", "--model", "group-detr")
    assert config.group_detr == 11 and config.two_stage is False
    args, config = _setup("--preset", "demo", "--model", "dn-deformable-detr", "--variant", "two_stage")
    assert config.dn_number > 0 and config.two_stage and args.model == "dn-deformable-detr"


def test_resume_with_another_family_is_refused(data, tmp_path):
    dino = DinoConfig(backbone="resnet18", backbone_out_indices=[2], num_feature_levels=2, d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=6,
                      encoder_n_points=2, decoder_n_points=2, dn_number=2)
    run = tmp_path / "dino_run"
    common = dict(data=str(data), epochs=1, batch_size=2, eval_batch_size=2, num_workers=0, image_size=48, max_size=48, progress=False,
                  max_steps_per_epoch=1, multiscale=False)
    train(TrainingArgs(out=str(run), model="dino", **common), dino)
    with pytest.raises(ValueError, match=r"is a dino run.*--model deformable-detr"):
        train(TrainingArgs(out=str(tmp_path / "again"), resume=str(run), model="deformable-detr", **common))


@pytest.mark.parametrize(
    "flags,named",
    [(["--model", "dino"], "--model dino"), (["--variant", "single_scale"], "num_feature_levels"), (["--num-queries", "7"], "num_queries")],
)
def test_detect_flags_that_disagree_with_the_checkpoint_are_errors(tiny_checkpoint, tmp_path, capsys, flags, named):
    image = tmp_path / "image.png"
    from models.data.synthetic import generate_image

    generate_image(DEMO_SPEC, seed=0, split="test", index=0)[0].save(image)
    status = main(["detect", str(image), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "out"), *flags])
    assert status == 2
    assert named in capsys.readouterr().err
