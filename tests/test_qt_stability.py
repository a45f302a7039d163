"""PySide6 6.12.0 corrupts None's refcount on Python 3.11 and aborts after a few thousand void Qt calls.
We pin 6.11.3; this makes sure whatever is installed survives many such calls."""

import subprocess
import sys
import textwrap


def test_twenty_thousand_void_qt_calls_do_not_abort_the_interpreter():
    script = textwrap.dedent(
        """
        import sys
        from PySide6.QtWidgets import QApplication, QWidget
        app = QApplication([])
        widget = QWidget()
        for i in range(20000):
            widget.setToolTip("x")    # returns None (void)
            widget.setVisible(False)  # returns None (void)
        print("done", sys.getrefcount(None) > 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"QT_QPA_PLATFORM": "offscreen", **__import__("os").environ})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done True" in result.stdout


def test_the_pinned_pyside_version_is_installed():
    import PySide6

    assert PySide6.__version__ == "6.11.3"
