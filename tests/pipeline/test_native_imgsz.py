"""A recipe with `imgsz: native` is validated at the size it will train at: the dataset's
recommended size, resolved once by the validation stage (tasks/validate.py) and handed on to
fine-tuning and selection as `ValidationOutput.imgsz`."""

from __future__ import annotations

import pytest

from phase2.dataset.validation import validate_for_recipe
from phase2.training.recipe import load_recipe, resolve_imgsz


def test_native_recipe_is_validated_at_the_recommended_size(real_dataset, tmp_path):
    native_recipe, seed_recipe = load_recipe("phase2-native"), load_recipe("phase2-seed")
    assert native_recipe.train.imgsz == "native" and seed_recipe.train.imgsz == 640
    native = validate_for_recipe(real_dataset / "data.yaml", native_recipe, cache_dir=tmp_path)
    seed = validate_for_recipe(real_dataset / "data.yaml", seed_recipe, cache_dir=tmp_path)

    # The real images are 224 and 312 px: native resolves to 320, and that is what gets checked.
    assert native.recommended_imgsz == 320 and native.imgsz == 320
    assert resolve_imgsz(native_recipe, native.recommended_imgsz) == native.imgsz  # what training uses
    native_codes, seed_codes = {f.code for f in native.findings}, {f.code for f in seed.findings}
    assert "IMGSZ_ABOVE_NATIVE" not in native_codes and native.compute_saved_fraction == 0
    assert "IMGSZ_ABOVE_NATIVE" in seed_codes and seed.imgsz == 640  # the seed recipe really is above native
    # Box sizes are measured at 320, not 640: every smallest box side is half of the seed's.
    pairs = zip(native.classes, seed.classes, strict=True)
    measured = [(n.min_box_side_px_at_imgsz, s.min_box_side_px_at_imgsz) for n, s in pairs]
    assert any(m for m, _ in measured)
    for at_320, at_640 in measured:
        assert (at_320 is None) == (at_640 is None)
        if at_320 is not None:
            assert at_320 == pytest.approx(at_640 / 2, abs=0.02)
    assert all("at imgsz 320 " in f.message for f in native.findings if f.code == "LBL_BOX_TINY")
    assert "(recipe 320;" in native.summary_markdown()
