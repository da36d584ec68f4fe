"""IDX (MNIST) files to class folders that data=files reads."""
import gzip

import numpy as np
import pytest
from PIL import Image

from pipelines.data.idx import main, read_idx


def _idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_to_class_folders(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 2, 7], np.uint8)
    _idx(tmp_path / "images.gz", images)
    _idx(tmp_path / "labels", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "images.gz"), images)

    main([str(tmp_path / "images.gz"), str(tmp_path / "labels"), str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["2", "7"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "7" / "00002.png")), images[2])


def test_idx_errors_name_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01x")
    with pytest.raises(ValueError, match="bad: not an unsigned-byte IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match=r"short: header says \(5,\), found 2 values"):
        read_idx(tmp_path / "short")
