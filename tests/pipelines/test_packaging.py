"""A non-editable install ships conf/ beside pipelines/ and layers/."""
import pathlib
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_contains_every_config_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True,
                   timeout=300, cwd=tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)
    assert {"pipelines/__main__.py", "layers/__init__.py"} <= names
    assert not any(pathlib.PurePosixPath(n).parts[0] in ("tests", "mlflow") for n in names)
