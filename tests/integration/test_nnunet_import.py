"""An nnU-Net v2 trained-model folder imported as a store version predicts what nnU-Net predicts.

`tests/data/nnunet_tiny/` holds the `plans.json` and `dataset.json` that nnU-Net v2's own
`nnUNetv2_extract_fingerprint` + `nnUNetv2_plan_experiment` wrote for twelve 32³ synthetic CT
cases (0.7 × 0.7 × 1 mm, like `peers.make_synthetic_ct_series`). Training with `nnUNetv2_train`
takes far too long for a test on a shared 2-core machine, so the test writes the fold's
`checkpoint_final.pth` itself: the network nnU-Net's trainer builds from those plans, with
seeded random weights, in nnU-Net's checkpoint layout. `radloop models add` imports the folder;
radloop segments a synthetic CT series with it (its own preprocessing and sliding window); and
nnU-Net's own predictor (`nnUNetPredictor`, no mirroring) segments the same series, as radloop's
training export writes it as NIfTI. The two label maps must agree on more than 99 % of the voxels
(not all: the preprocessing differs in float details, e.g. the plans hold the spacing as float32),
and far less when one of them is flipped or transposed: that checks axes, orientation, spacing,
intensity and patch conventions.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from typer.testing import CliRunner

import peers
from radloop.cli import app
from radloop.core.errors import ConfigError
from radloop.core.refs import SeriesRef
from radloop.core.settings import load_settings
from radloop.core.settings.inference import AutoBackendSettings
from radloop.inference.registry import build_in_process
from radloop.inference.resolve import ResolvedModel
from radloop.inference.store import ModelStore
from radloop.pipelines.operators.inference import segment
from radloop.pipelines.timing import StageTimer
from radloop.pipelines.volume import load_volume
from radloop.training_export.nifti import canonical_reorientation, image_nifti, label_nifti, write_nifti_gz

pytestmark = pytest.mark.slow

PLANS = Path(__file__).parent.parent / "data" / "nnunet_tiny"
SIZE = 32


def _results_folder(root: Path) -> Path:
    """`Dataset501_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres` with fold 0's checkpoint (seeded weights)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = root / "Dataset501_Tiny" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copyfile(PLANS / name, folder / name)
    plans, dataset = (
        json.loads((PLANS / "plans.json").read_text()),
        json.loads((PLANS / "dataset.json").read_text()),
    )
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(7)
    network = nnUNetTrainer.build_network_architecture(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dataset),
        manager.get_label_manager(dataset).num_segmentation_heads,
        enable_deep_supervision=True,  # as nnU-Net trains and saves it
    )
    torch.save(
        {
            "network_weights": network.state_dict(),
            "init_args": {"plans": plans, "configuration": "3d_fullres", "fold": 0, "dataset_json": dataset},
            "trainer_name": "nnUNetTrainer",
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 1,
        },
        folder / "fold_0" / "checkpoint_final.pth",
    )
    return folder


def _ct_series(folder: Path) -> list[Path]:
    """A 32³ synthetic CT: −100 HU with noise and a 40 HU ball off the centre (not symmetric)."""
    files = peers.make_synthetic_ct_series(folder, n=SIZE, rows=SIZE, cols=SIZE, seed=11)
    rng = np.random.default_rng(11)
    z, y, x = np.ogrid[:SIZE, :SIZE, :SIZE]
    ball = (z - 13) ** 2 + (y - 18) ** 2 + (x - 11) ** 2 <= 8**2
    hu = -100.0 + rng.normal(0.0, 20.0, size=(SIZE,) * 3)
    hu[ball] += 140.0
    hu[:, :4, :] = 300.0  # a bright band along one side, so a flipped axis would show
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.rint(hu[index] + 1024).astype(np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return files


def test_an_nnunet_folder_is_imported_and_predicts_as_nnunet_does(tmp_path: Path) -> None:
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    folder = _results_folder(tmp_path / "nnUNet_results")
    config = tmp_path / "radloop.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nsecret_key: nnunet-import-test-secret-key-0123\n")
    added = CliRunner().invoke(
        app,
        ["models", "add", str(folder), "--name", "tiny_nnunet", "--version", "1", "--config", str(config)],
    )
    assert added.exit_code == 0, f"{added.output} {added.exception!r}"
    settings = load_settings(config)
    stored = ModelStore(settings.inference.store_dir(settings.data_dir)).get("tiny_nnunet", "1")
    spec = stored.spec
    plans = json.loads((PLANS / "plans.json").read_text())
    patch = plans["configurations"]["3d_fullres"]["patch_size"]  # (z, y, x); transpose_forward is [0, 1, 2]
    assert plans["transpose_forward"] == [0, 1, 2]
    assert (spec.source, spec.format, spec.orientation) == ("nnunet", "torchscript", "RAS")
    assert spec.roi_size == patch[::-1] and spec.spacing == pytest.approx([0.7, 0.7, 1.0])
    assert spec.intensity.kind == "scale_range" and spec.intensity.clip
    assert [(label.value, label.name, label.type.meaning) for label in spec.labels] == [
        (1, "spleen", "Spleen")
    ]
    imported = json.loads((stored.folder / "nnunet-import.json").read_text())
    assert imported["trainer"] == "nnUNetTrainer" and imported["configuration"] == "3d_fullres"
    assert (stored.folder / "nnunet-plans.json").is_file()

    files = _ct_series(tmp_path / "ct")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    volume = load_volume(files, SeriesRef(str(first.StudyInstanceUID), str(first.SeriesInstanceUID)))
    settings = AutoBackendSettings()
    resolved = ResolvedModel("tiny_nnunet", build_in_process(stored, settings), spec, settings)
    ours = segment(resolved, volume, "auto", StageTimer())

    reorientation = canonical_reorientation(volume)
    image_path = tmp_path / "case_0000.nii.gz"
    write_nifti_gz(image_nifti(volume, reorientation), image_path)
    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,))
    data, properties = SimpleITKIO().read_images([str(image_path)])
    theirs = np.asarray(predictor.predict_single_npy_array(data, properties, None, None, False))  # (z, y, x)
    mine = np.asarray(label_nifti(ours, reorientation).dataobj).transpose(
        2, 1, 0
    )  # NIfTI (x, y, z) → (z, y, x)
    assert theirs.shape == mine.shape
    foreground = float((theirs > 0).mean())
    assert 0.02 < foreground < 0.98, f"a degenerate prediction proves nothing: {foreground:.3f} foreground"
    agreement = float((theirs == mine).mean())
    print(
        f"\nnnU-Net vs radloop on the imported version: {agreement:.4%} of voxels agree, "
        f"{foreground:.1%} foreground"
    )
    assert agreement > 0.99
    for axis in range(3):  # the check can tell: a flipped axis or swapped axes would be caught
        assert float((theirs == np.flip(mine, axis)).mean()) < agreement - 0.05, f"axis {axis}"
    assert float((theirs == mine.transpose(0, 2, 1)).mean()) < agreement - 0.05


def test_folders_radloop_cannot_import_are_refused(tmp_path: Path) -> None:
    folder = _results_folder(tmp_path / "results")
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["channel_names"] = {"0": "T1", "1": "T2"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(ConfigError, match="2 input channels"):
        ModelStore(tmp_path / "store").add(folder, "two_channels", "1")
    shutil.rmtree(folder / "fold_0")
    with pytest.raises(ConfigError, match="checkpoint_final.pth"):
        ModelStore(tmp_path / "store").add(folder, "no_checkpoint", "1")
