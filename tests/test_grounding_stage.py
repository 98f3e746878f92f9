"""The boxes stage end to end on tiny models of a grounding VLM family and of two detector architectures.

The tiny models are random: their answers and detections are noise. The tests
check that everything unparseable is rejected with its reason, that the boxes
that can be read land in the right pixels of the original image (by the
processors' own resize and post-processing), and that the items stage reads
the result. The taught VLMs (``fixtures.grounding.teach_answer``) answer one
known text, through the real generation path.
"""

import json
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from fixtures import benchmarks as fx
from fixtures.grounding import (
    build_tiny_grounding_dino,
    build_tiny_owlv2,
    official_resize,
    run_boxes_stage,
    stage_prompts,
    teach_answer,
)
import peekaboo.config as pcfg
from peekaboo import tables
from peekaboo.datasets import RawItem, get_adapter
from peekaboo.datasets.boxes import read_boxes
from peekaboo.grounding.coords import REJECT_KINDS
from peekaboo.images import load_image
from peekaboo.items import build_items
from peekaboo.models.identity import ModelSourceError
from peekaboo.models.loading import ModelLoadError
from peekaboo.models.tiny import build_tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fx.write_all(tmp_path_factory.mktemp("grounding-data"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_models):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("grounding-models")
    return {
        "qwen2_5_vl": tiny_models["qwen2_5_vl"],  # the session's tiny VLMs (read only here)
        "qwen3_vl": tiny_models["qwen3_vl"],
        "owlv2": build_tiny_owlv2(root / "owlv2"),
        "grounding_dino": build_tiny_grounding_dino(root / "grounding_dino"),
    }


def read_outputs(outputs):
    answers = tables.read_table(outputs["answers"])
    rejects = tables.read_table(outputs["rejects"])
    lines = [json.loads(l) for l in outputs["boxes"].read_text(encoding="utf-8").splitlines()]
    summary = pd.read_csv(outputs["summary"])
    return answers, rejects, lines, summary


# ----------------------------------------------------------------------------
# config


def test_boxes_entries_validate_and_name_the_key_at_fault(tmp_path):
    def check(boxes, check_paths=False):
        raw = {"datasets": {"d": {"adapter": "panels", "boxes": boxes}}, "models": {"m": {"source": "x"}}}
        return pcfg.validate(raw, base_dir=tmp_path, check_paths=check_paths)["datasets"]["d"]["boxes"]

    assert check(None) is None and check("mine.jsonl") == "mine.jsonl"  # the plain forms still work
    vlm = check({"kind": "vlm", "model": {"source": "Qwen/Qwen2.5-VL-7B-Instruct"}})
    assert vlm["format"] == "auto" and vlm["max_boxes"] == 4 and "{question}" in vlm["prompt"]
    assert vlm["model"]["trust_remote_code"] is False and vlm["model"]["revision"] == "main"
    assert check({"kind": "detector", "model": {"source": "x"}})["score_threshold"] == 0.3
    for boxes, message in [
        ({"kind": "vlm"}, "datasets.d.boxes: 'model' is a required property"),
        ({"kind": "file"}, "datasets.d.boxes: 'path' is a required property"),
        ({"kind": "vlm", "model": {"source": "x"}, "promt": "x"}, "unknown key datasets.d.boxes.promt"),
        ({"kind": "owl", "model": {"source": "x"}}, "datasets.d.boxes.kind"),
        ({"kind": "detector", "model": {"revision": "main"}}, "datasets.d.boxes.model: 'source' is a required"),
        ({"kind": "detector", "model": {"source": "x"}, "score_threshold": 2}, "datasets.d.boxes.score_threshold"),
    ]:
        with pytest.raises(pcfg.ConfigError, match=message.replace(".", r"\.").replace("'", "'")):
            check(boxes)
    with pytest.raises(pcfg.ConfigError, match=r"datasets\.d\.boxes\.path: no such file"):
        check({"kind": "file", "path": "missing.jsonl"}, check_paths=True)
    with pytest.raises(pcfg.ConfigError, match=r"datasets\.d\.boxes: no such file"):
        check("missing.jsonl", check_paths=True)


# ----------------------------------------------------------------------------
# VLMs


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_noise_answers_are_rejected_with_their_reasons_and_items_read_the_result(family, models, data, tmp_path):
    boxes = {"kind": "vlm", "model": {"source": str(models[family]), "generation": {"max_new_tokens": 24},
                                      "batch_size": 4}}
    outputs, spec = run_boxes_stage(tmp_path, "hallusionbench", data["hallusionbench"], boxes)
    answers, rejects, lines, summary = read_outputs(outputs)
    # one row per image of each item, and the item without an image with its reason
    assert list(answers["item_id"]) == [r["item_id"] for r in _items("hallusionbench", data)]
    no_image = answers[answers["image"].isna()]
    assert list(no_image["item_id"]) == ["VS_chart_3_0_0"] and list(no_image["status"]) == ["skipped"]
    asked = answers[answers["image"].notna()]
    assert set(asked["status"]) == {"no boxes"} and (asked["n_rejects"] >= 1).all()
    assert asked["answer"].map(lambda a: isinstance(a, str)).all()
    assert asked["asked"].str.contains("Is the right orange circle", regex=False).sum() == 4
    # every answer is accounted for by a reason the stage knows
    assert set(rejects["kind"]) <= set(REJECT_KINDS) and set(rejects["kind"]) - {"no image"}
    assert set(rejects[rejects["item_id"] == "VS_chart_3_0_0"]["kind"]) == {"no image"}
    assert rejects["reason"].map(bool).all()
    # the processor's resize, as transformers computes it for these 48 x 32 images
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(models[family])
    expected = official_resize(family, processor, 48, 32)
    assert set(zip(asked["resized_width"], asked["resized_height"])) == {expected}
    assert lines == [] and int(summary["n_items_with_boxes"][0]) == 0
    # the items stage reads the (empty) result: items without boxes, none rejected for boxes
    items, item_rejects = build_items("hallusionbench", spec, 0, tmp_path / "results", boxes_path=outputs["boxes"])
    assert len(items) == 6 and item_rejects.empty and items["boxes_source"].isna().all()


def _items(dataset, data):
    spec = {"adapter": dataset, "options": data[dataset]}
    return [{"item_id": r.item_id, "images": r.images, "question": r.question}
            for r in get_adapter(dataset, spec).records() if isinstance(r, RawItem)]


QWEN25_ANSWER = '[{"bbox_2d":[14,7,42,35],"label":"bar"},{"bbox_2d":[30,30,30,50]},{"bbox_2d":[0,0,99,9]}]'
GLM_ANSWER = "Box <|begin_of_box|>[[100,250,600,750]]<|end_of_box|> and <|begin_of_box|>[[5,5]]<|end_of_box|>"


@pytest.mark.slow
@pytest.mark.parametrize("family, answer", [("qwen2_5_vl", QWEN25_ANSWER), ("glm46v", GLM_ANSWER)])
def test_taught_answers_land_in_the_right_pixels_of_every_image(family, answer, data, tmp_path):
    """MMMU-Pro fixture items with one to three non-square images each; one known answer per image."""
    model = build_tiny(family, tmp_path / family)
    boxes = {"kind": "vlm", "model": {"source": str(model), "generation": {"max_new_tokens": 100}, "batch_size": 3}}
    entry = pcfg.validate({"datasets": {"d": {"adapter": "mmmu_pro", "boxes": boxes}}, "models": {"m": {"source": "x"}}},
                          check_paths=False)["datasets"]["d"]["boxes"]
    records = [r for r in get_adapter("mmmu_pro", {"adapter": "mmmu_pro", "options": data["mmmu_pro"]}).records()
               if isinstance(r, RawItem)]
    teach_answer(model, answer, stage_prompts(entry, records, load_image))

    outputs, spec = run_boxes_stage(tmp_path, "mmmu_pro", data["mmmu_pro"], boxes)
    answers, rejects, lines, summary = read_outputs(outputs)
    assert list(answers["answer"].unique()) == [answer] and set(answers["status"]) == {"ok"}
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    expected = {}
    for record in records:
        for k, source in enumerate(record.images):
            w, h = load_image(source).size
            if family == "qwen2_5_vl":  # absolute pixels of the resized image
                rw, rh = official_resize(family, processor, w, h)
                box = [14 * w / rw, 7 * h / rh, 42 * w / rw, 35 * h / rh]
            else:  # each value on the 0-1000 grid of the image's side
                box = [0.1 * w, 0.25 * h, 0.6 * w, 0.75 * h]
            expected.setdefault(record.item_id, []).append(([round(v, 2) for v in box], k))
    got = {line["item_id"]: [(b["box"], b["image"]) for b in line["boxes"]] for line in lines}
    assert got.keys() == expected.keys()
    for item_id, boxes_ in expected.items():
        assert [image for _, image in got[item_id]] == [image for _, image in boxes_]
        for (box, _), (want, _) in zip(got[item_id], boxes_):
            assert box == pytest.approx(want, abs=0.006), item_id
    n_images = len(answers)
    if family == "qwen2_5_vl":
        assert (lines[0]["boxes"][0]["label"], lines[0]["source"]) == ("bar", "vlm")
        assert sorted(rejects["kind"]) == sorted(["degenerate box"] * n_images + ["box outside image"] * n_images)
        assert set(rejects["box"]) == {1, 2}
    else:
        assert list(rejects["kind"]) == ["unparseable answer"] * n_images and set(rejects["box"]) == {1}

    # the items stage takes them as the items' regions, and says where they came from
    items, item_rejects = build_items("mmmu_pro", spec, 0, tmp_path / "results", boxes_path=outputs["boxes"])
    assert list(item_rejects["item_id"]) == ["test_Biology_5"]  # names an empty image column, as without boxes
    for _, row in items.iterrows():
        assert row["boxes_source"] == "vlm"
        regions = [(list(r["box"]), int(r["image"])) for r in row["regions"]]
        assert regions == got[row["item_id"]]
    assert read_boxes(outputs["boxes"], "mmmu_pro").errors == []


# ----------------------------------------------------------------------------
# detectors


def detections(model_dir, image, phrases, threshold, architecture):
    """Boxes straight from the checkpoint's processor and model, post-processed to the image's size."""
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    inputs = processor(text=[phrases], images=[image], return_tensors="pt", truncation=True)
    with torch.inference_mode():
        out = model(**inputs)
    kwargs = dict(threshold=threshold, target_sizes=[(image.height, image.width)])
    if architecture == "owlv2":
        found = processor.post_process_grounded_object_detection(out, text_labels=[phrases], **kwargs)[0]
    else:
        found = processor.post_process_grounded_object_detection(out, input_ids=inputs["input_ids"],
                                                                 text_threshold=0.25, **kwargs)[0]
    return sorted(zip(found["scores"].tolist(), found["boxes"].tolist()), key=lambda x: -x[0])


@pytest.mark.parametrize("architecture", ["owlv2", "grounding_dino"])
def test_detector_boxes_are_the_processors_post_processed_boxes_clipped_to_the_image(architecture, models, data,
                                                                                    tmp_path):
    boxes = {"kind": "detector", "model": {"source": str(models[architecture])}, "score_threshold": 0.0,
             "max_boxes": 3, "nms_iou": 0.5}
    outputs, spec = run_boxes_stage(tmp_path, "hallusionbench", data["hallusionbench"], boxes)
    answers, rejects, lines, summary = read_outputs(outputs)
    got = {line["item_id"]: line["boxes"] for line in lines}
    for _, row in answers[answers["status"] != "skipped"].iterrows():
        record = next(r for r in _items("hallusionbench", data) if r["item_id"] == row["item_id"])
        image = load_image(record["images"][0])
        found = detections(models[architecture], image, list(row["phrases"]), 0.0, architecture)
        recorded = json.loads(row["answer"])
        assert [d["box"] for d in recorded] == [[round(v, 2) for v in box] for _, box in found]
        # every detection is either a box of the item or a reject with its reason
        mine = [r for _, r in rejects[rejects["item_id"] == row["item_id"]].iterrows()]
        assert len(got.get(row["item_id"], [])) + len(mine) == len(found)
        for box in got.get(row["item_id"], []):
            x0, y0, x1, y1 = box["box"]
            assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height and box["image"] == 0
            # the box is its detection clipped to the image
            assert any(box["box"] == pytest.approx([max(b[0], 0), max(b[1], 0), min(b[2], image.width),
                                                    min(b[3], image.height)], abs=0.006) for _, b in found)
        for reject in mine:
            assert reject["kind"] in ("box outside image", "degenerate box", "suppressed", "over the box limit")
            if reject["kind"] == "box outside image":  # nothing of it inside the image
                x0, y0, x1, y1 = json.loads(reject["fragment"])["box"]
                assert x0 >= image.width or y0 >= image.height or x1 <= 0 or y1 <= 0
        assert len(got.get(row["item_id"], [])) <= 3
    if architecture == "owlv2":
        # OWLv2 pads the 48 x 32 image to a 48 x 48 square: detections of the padding are outside the image
        assert (rejects["kind"] == "box outside image").any()
    assert set(rejects[rejects["item_id"] == "VS_chart_3_0_0"]["kind"]) == {"no image"}
    items, item_rejects = build_items("hallusionbench", spec, 0, tmp_path / "results", boxes_path=outputs["boxes"])
    assert item_rejects.empty
    sources = [None if pd.isna(v) else v for v in items["boxes_source"]]
    assert dict(zip(items["item_id"], sources)) == {
        r["item_id"]: ("detector" if r["item_id"] in got else None) for r in _items("hallusionbench", data)}


def test_detector_beside_human_boxes_reports_agreement_and_is_deterministic(models, data, tmp_path):
    boxes = {"kind": "detector", "model": {"source": str(models["owlv2"])}, "score_threshold": 0.0}
    outputs, spec = run_boxes_stage(tmp_path / "a", "visargs", data["visargs"], boxes)
    first = {k: p.read_bytes() for k, p in outputs.items()}
    outputs_b, _ = run_boxes_stage(tmp_path / "b", "visargs", data["visargs"], boxes)
    assert {k: p.read_bytes() for k, p in outputs_b.items()} == first  # same config, same bytes
    agreement = tables.read_table(outputs["agreement"])
    # compared: the items with an image and all their own boxes inside it (the items stage keeps those)
    assert list(agreement["item_id"]) == ["5e7f108728fb848eb8e3cccfdd62ef8f", "aabbcc0001"]
    assert list(agreement["n_human"]) == [3, 2] and list(agreement["n_predicted"]) == [4, 4]
    assert agreement[["recall_50", "mean_best_iou", "union_iou"]].apply(lambda c: c.between(0, 1)).all().all()
    summary = pd.read_csv(outputs["summary"])
    assert int(summary["n_items_compared"][0]) == 2 and int(summary["n_human_boxes"][0]) == 5
    assert summary["recall_50"][0] == pytest.approx(agreement["n_matched"].sum() / 5)
    answers = tables.read_table(outputs["answers"])
    assert dict(zip(answers["item_id"], answers["status"]))["4455660004"] == "skipped"
    # the dataset's own regions win, and an item without any (no b_box) takes the detector's; the column says which
    items, _ = build_items("visargs", spec, 0, tmp_path / "results", boxes_path=outputs["boxes"])
    assert dict(zip(items["item_id"], items["boxes_source"])) == {
        "5e7f108728fb848eb8e3cccfdd62ef8f": "dataset", "aabbcc0001": "dataset", "ddeeff0002": "detector"}
    own = items.set_index("item_id").loc["aabbcc0001", "regions"]
    assert [r["label"] for r in own] == ["VP1", "VP2"]


def test_a_model_that_cannot_be_loaded_is_an_error_naming_the_key(models, data, tmp_path):
    with pytest.raises(ModelSourceError, match=r"datasets\.mathvista\.boxes\.model\.source: no model folder"):
        run_boxes_stage(tmp_path, "mathvista", data["mathvista"],
                        {"kind": "vlm", "model": {"source": str(tmp_path / "nowhere")}})
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(models["qwen2_5_vl"] / "config.json", config_only / "config.json")  # no weights
    with pytest.raises(ModelLoadError, match=r"datasets\.mathvista\.boxes\.model: cannot load"):
        run_boxes_stage(tmp_path, "mathvista", data["mathvista"], {"kind": "vlm", "model": {"source": str(config_only)}})
    from peekaboo.grounding.detector import DetectorLoadError

    with pytest.raises(DetectorLoadError, match=r"datasets\.mathvista\.boxes\.model: model_type 'qwen3_vl' is not"):
        run_boxes_stage(tmp_path, "mathvista", data["mathvista"],
                        {"kind": "detector", "model": {"source": str(models["qwen3_vl"])}})


def test_an_unreadable_image_fails_its_request_only(models, data, tmp_path):
    broken = tmp_path / "hb"
    path = fx.write_hallusionbench_json(broken)
    target = broken / "hallusionbench" / "hallusion_bench" / "VD" / "illusion" / "0_1.png"
    target.write_bytes(b"not a png")
    options = {"path": str(path), "images": str(broken / "hallusionbench")}
    boxes = {"kind": "detector", "model": {"source": str(models["owlv2"])}, "score_threshold": 0.0}
    outputs, _ = run_boxes_stage(tmp_path, "hallusionbench", options, boxes)
    answers = tables.read_table(outputs["answers"]).set_index("item_id")
    assert answers.loc["VD_illusion_0_1_0", "status"] == "skipped"
    assert answers.loc["VD_illusion_0_1_0", "error"].startswith("unreadable image")
    assert answers.loc["VD_illusion_0_0_0", "status"] == "ok"


def test_no_image_rgba_and_grayscale_images_are_read_like_the_items_stage(tmp_path):
    image = Image.new("RGBA", (10, 6), (255, 0, 0, 0))
    assert load_image(image).getpixel((0, 0)) == (255, 255, 255)  # transparent on white, as items keeps it
    assert load_image(Image.new("L", (4, 4), 7)).mode == "RGB"
