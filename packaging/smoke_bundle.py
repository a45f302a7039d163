"""Start the frozen app offscreen, open a sample, grab a screenshot and check it exits 0."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(executable: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "frozen.png"
        # its own data and settings folders: closing the window saves its layout, never into the user's settings
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", SGRAFFITO_DATA=str(Path(tmp) / "data"),
                   XDG_CONFIG_HOME=str(Path(tmp) / "config"))
        result = subprocess.run([executable, "--demo", "--screenshot", str(shot), "--quit-after", "2000"],
                                env=env, capture_output=True, text=True, timeout=300)
        settings = Path(tmp) / "config" / "Sgraffito" / "Sgraffito.ini"
        if result.returncode != 0 or not shot.is_file() or shot.stat().st_size == 0 or not settings.is_file():
            print(f"frozen app failed (exit {result.returncode}):\n{result.stderr[-3000:]}", file=sys.stderr)
            return 1
        version = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=120)
        print(f"frozen app OK: {version.stdout.strip()}, screenshot {shot.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
