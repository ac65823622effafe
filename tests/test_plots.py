"""plots.pyplot: the one way panacea imports matplotlib (Agg, and its font cache in panacea's own folder)."""

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_matplotlib_writes_nothing_in_the_home_folder(tmp_path):
    """Without MPLCONFIGDIR, a plot's font cache lands under $PANACEA_CACHE/matplotlib (not in
    ~/.config or ~/.cache), and the variable is not left set in the process afterwards."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), PANACEA_CACHE=str(cache), PYTHONPATH=SRC)
    code = ("import os; from panacea.plots import plot_hs_fa, point, pyplot; "
            "plot_hs_fa([point({'name': 'sft', 'harmful_score': 50.0, 'finetune_accuracy': 90.0})], "
            f"{str(tmp_path / 'p.png')!r}, 'title'); "
            "import matplotlib; print(matplotlib.get_cachedir()); print(os.environ.get('MPLCONFIGDIR'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, left = out.stdout.split()[-2:]
    assert Path(where) == cache / "matplotlib" and left == "None"
    assert _files(home) == []
    assert any(name.startswith("fontlist") for name in _files(cache / "matplotlib"))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_a_set_mplconfigdir_is_the_users_choice(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env.update(HOME=str(tmp_path / "home"), PANACEA_CACHE=str(tmp_path / "cache"), MPLCONFIGDIR=str(tmp_path / "mine"),
               PYTHONPATH=SRC)
    code = "from panacea.plots import pyplot; pyplot(); import matplotlib; print(matplotlib.get_cachedir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.split()[-1]) == tmp_path / "mine" and not (tmp_path / "cache").exists()
