"""What ``POST /v1/inspect`` says about the upload itself: the map's regions in the uploaded image's
own pixels, that image's size and the SHA-256 of its bytes (pipeline.serve.inspection, no Ray)."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.serve.inspection import RequestError, decode_image, inspection_result, new_job, upload_size
from train.model.batch import Prediction


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 30)).save(out, format="PNG")
    return out.getvalue()


def hot_top_right() -> Prediction:
    """A 32 x 32 map whose one region (0.8) is the top right quarter's upper half."""
    amap = np.zeros((32, 32), np.float32)
    amap[0:8, 16:32] = 0.8
    return Prediction("coin", amap, 0.8, "Yes, there is an anomaly at the top right.")


def test_upload_size_is_width_then_height_from_the_header():
    assert upload_size(png_bytes(120, 45)) == (120, 45)
    with pytest.raises(RequestError, match="not an image file"):
        decode_image(b"not an image at all", 32, "the image")  # decode_image reads the same header


def test_a_job_records_the_uploads_size_and_digest_and_the_answer_reports_them():
    data = png_bytes(640, 480)
    digest = hashlib.sha256(data).hexdigest()
    job = new_job(decode_image(data, 32, "the image"), "coin", None, [], True, (), upload_size(data), digest)
    result = inspection_result(job, hot_top_right(), "none")
    assert result["sha256"] == digest and len(digest) == 64
    assert result["image_size"] == [640, 480]
    (region,) = result["regions"]
    assert region["box"] == [320, 0, 640, 120]  # the map's (16, 0, 32, 8) times 20 and 15
    assert region["area_px"] == 320 * 120 and region["area_share"] == pytest.approx(0.125)
    assert region["peak"] == pytest.approx(result["score"]) and region["position"] == "top right"
    assert json.loads(json.dumps(result))["regions"] == result["regions"]  # plain JSON


def test_without_an_upload_size_boxes_are_in_the_maps_pixels_and_no_map_has_no_regions():
    job = new_job(np.zeros((32, 32, 3), np.uint8), "coin", "q", [], True)
    assert job.original_size is None and job.sha256 is None
    result = inspection_result(job, hot_top_right(), "small")
    assert result["image_size"] == [32, 32] and result["regions"][0]["box"] == [16, 0, 32, 8]
    assert result["sha256"] is None
    quiet = Prediction("coin", np.full((32, 32), 0.4, np.float32), 0.4, "No.")
    assert inspection_result(job, quiet, "full")["regions"] == []
    assert inspection_result(job, Prediction("coin", None, None, "No."), "full")["regions"] == []
