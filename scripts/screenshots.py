"""The README's screenshots of the journal view: docs/img/overview.png and docs/img/run.png.

It starts the demo as `make run` does (the demo primary, and the daemon on config/demo.yaml with its web view), but
in a temporary state dir and on free ports, so that a running demo is left alone; forces a drill through hyopsctl and
waits for its run to succeed; then shows the overview and the drill's run page in headless Chromium (the e2e tests'
set-up: Debian's chromium and chromium-driver) and saves each, PNG-optimised. Everything it started it stops.

    .venv/bin/python scripts/screenshots.py [--out docs/img] [--size 1280x900]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DRILL_S = 30.0  # the demo drill's four sandbox steps take about 2 s


def demo_config(root: Path, probe_port: int, web_port: int) -> dict[str, Any]:
    """config/demo.yaml with its state under ``root`` and its probe and view on the given ports."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["state_dir"] = str(root / "state")
    config["web"]["port"] = web_port
    for probe in config["sources"]:  # /health for prod, /app for the burst lane
        probe["url"] = probe["url"].replace("127.0.0.1:8081", f"127.0.0.1:{probe_port}")
    for lane in config["lanes"].values():  # its relative paths are relative to config/, which this copy is not in
        lane["profile"] = str((ROOT / "config" / lane["profile"]).resolve())
    return config


def save(png: bytes, path: Path) -> None:
    """Lossless: the same pixels, fewer bytes (Pillow's optimize)."""
    raw = path.with_suffix(".raw.png")
    raw.write_bytes(png)
    with Image.open(raw) as image:
        image.save(path, optimize=True)
    raw.unlink()
    print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--size", default="1280x900", help="the page area, WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    # This checkout's code, in this process and in the daemons it starts (the venv may be another checkout's).
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(ROOT))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.e2e.harness import DaemonProcess, Primary, free_port, wait_for
    from tests.e2e.test_web_view import chromium

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hyops-screenshots-") as tmp:
        primary = Primary(free_port())
        daemon = DaemonProcess(Path(tmp), primary.port, {}, {})
        daemon.config.write_text(yaml.safe_dump(demo_config(Path(tmp), primary.port, free_port()), sort_keys=False))
        browser = None
        try:
            primary.start()
            daemon.start()
            status = daemon.ctl("status")
            print(status.stdout, end="")
            url = daemon.ctl_json("status")["web"]
            assert f"journal view: {url}" in status.stdout, "hyopsctl status does not show the journal view's URL"
            wait_for("both lanes' paths checked", lambda: all(lane["readiness"] for lane in daemon.ctl_json("status")["lanes"]))

            run_id = daemon.ctl_json("drill", "--lane", "drill")["decision"]["run_id"]

            def ended() -> list[dict[str, Any]]:
                runs = daemon.ctl_json("journal", "list", "--lane", "drill")
                return [r for r in runs if r["run_id"] == run_id and r["ended_at"]]

            [run] = wait_for(f"drill {run_id} to end", ended, DRILL_S)
            assert run["status"] == "succeeded", run

            browser = chromium()
            # The page's own area at this size (a window's size would include what the browser draws around it).
            metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            browser.get(url)
            WebDriverWait(browser, 10, 0.2).until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#runs tr[data-run="{run_id}"]'))
            save(browser.get_screenshot_as_png(), args.out / "overview.png")
            browser.get(f"{url}runs/{run_id}")
            WebDriverWait(browser, 10, 0.2).until(lambda b: b.find_element(By.ID, "run-status").text == "succeeded")
            save(browser.get_screenshot_as_png(), args.out / "run.png")
        finally:
            if browser is not None:
                browser.quit()
            daemon.stop()
            primary.stop()


if __name__ == "__main__":
    main()
