"""Benchmark image storage: one 4k x 4k calexp written and read compressed vs uncompressed (astropy and fitsio),
and the bytes per visit of each dataset type for one twinkles1 visit through the pipeline that exists.

    flock /tmp/heavy.lock python benchmarks/bench_storage.py [--workdir DIR] [--repeat 3] [--keep]

Without --workdir a temporary folder (mktemp -d style) is made and removed at the end. In it one twinkles1 visit
(4096 x 4096) is simulated (`twinkles simulate DIR --preset twinkles1 --visits 1`) and processed by every stage
that exists (`twinkles run DIR --workers 1`), both with the repository's default storage (lossy compression);
then:

0. the visit is processed again in this process (process_eimage.run): the calexp as the stage makes it, before
   any quantization (the one in the repository is already quantized, and quantizing it again with the same
   step and seed would give the same values), and the full-resolution background it subtracted;
1. for that calexp: bytes on disk and write / read times (CPU and wall, median of --repeat) for the storage
   modes none / lossy / lossless, written through the repository's own writer (atomic, checksummed: what jobs
   do), plus the same planes through fitsio (cfitsio) with the same quantization, which is how the library was
   chosen; reads warm (file in the page cache) and cold (its pages dropped with posix_fadvise(DONTNEED) first,
   a file of ours only -- no global cache drop);
2. the quantization error of the lossy calexp against the uncompressed one, per pixel in units of sigma
   (sqrt(variance)): max and RMS (goal < 1/16 and < 0.02), masks compared bit for bit;
3. the background model: the calexp_background dataset's size, and its rebuilt image against the background
   the stage subtracted, in units of the sky noise (goal < 0.01);
4. bytes per visit by dataset type (the registry's sizes), and what the same datasets take uncompressed.

Prints tables and the ratios; no assertion (speed is not a test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cold(path: Path) -> None:
    """Drop one file's pages from the page cache (after writing them back), so the next read comes from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _timed(fn, repeat: int) -> dict:
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return {"wall_s": float(np.median(walls)), "cpu_s": float(np.median(cpus)), "result": out}


def _run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def _fitsio_write(exp, path: Path, steps, seed: int) -> None:
    """The calexp's three planes with fitsio (cfitsio), quantized as our writer does (same steps and seed)."""
    import fitsio
    if path.exists():
        path.unlink()
    tile = (16, exp.width)
    with fitsio.FITS(str(path), "rw") as f:
        f.write(None)
        f.write(exp.image, extname="IMAGE", compress="RICE", tile_dims=tile, qlevel=-steps[0],
                qmethod="SUBTRACTIVE_DITHER_1", dither_seed=seed)
        f.write(exp.mask, extname="MASK", compress="RICE", tile_dims=tile)
        f.write(exp.variance, extname="VARIANCE", compress="RICE", tile_dims=tile, qlevel=-steps[1],
                qmethod="SUBTRACTIVE_DITHER_1", dither_seed=seed)


def _fitsio_read(path: Path):
    import fitsio
    with fitsio.FITS(str(path)) as f:
        return [f[n].read() for n in ("IMAGE", "MASK", "VARIANCE")]


def bench_calexp(repo, exp, did: dict, workdir: Path, repeat: int) -> dict:
    from twinkles.compression import Compression, exposure_steps
    from twinkles.image import Exposure
    from twinkles.repo.storage import write_dataset_file

    seed = repo.compression_for("calexp", did).dither_seed
    out, files = {}, {}
    for mode in ("none", "lossy", "lossless"):
        path = workdir / f"calexp_{mode}.fits"
        comp = Compression(mode, seed)
        w = _timed(lambda: write_dataset_file(exp, "Exposure", path, durable=False, compression=comp), repeat)
        r = _timed(lambda: Exposure.read_fits(path), repeat)

        def cold_read():
            _cold(path)
            return Exposure.read_fits(path)
        rc = _timed(cold_read, repeat)
        out[f"astropy {mode}"] = {"bytes": path.stat().st_size, "write": w, "read": r, "read_cold": rc}
        files[mode] = path
    steps = exposure_steps(exp.variance)
    path = workdir / "calexp_fitsio.fits"
    w = _timed(lambda: _fitsio_write(exp, path, steps, seed), repeat)
    r = _timed(lambda: _fitsio_read(path), repeat)

    def cold_fitsio():
        _cold(path)
        return _fitsio_read(path)
    out["fitsio lossy"] = {"bytes": path.stat().st_size, "write": w, "read": r,
                           "read_cold": _timed(cold_fitsio, repeat)}
    plain = out["astropy none"]["read"]["result"]
    lossy = out["astropy lossy"]["read"]["result"]
    finite = np.isfinite(plain.image)
    err = ((lossy.image - plain.image) / np.sqrt(plain.variance))[finite]
    verr = np.abs(lossy.variance - plain.variance) / plain.variance
    quality = {"image_err_max_sigma": float(np.abs(err).max()), "image_err_rms_sigma": float(np.sqrt(np.mean(err**2))),
               "image_err_mean_sigma": float(err.mean()), "variance_rel_err_max": float(verr.max()),
               "mask_identical": bool(np.array_equal(lossy.mask, plain.mask)),
               "lossless_identical": bool(np.array_equal(out["astropy lossless"]["read"]["result"].image,
                                                         plain.image, equal_nan=True)),
               "fitsio_reads_same": bool(np.array_equal(_fitsio_read(files["lossy"])[2], lossy.variance)),
               "step_image": steps[0], "step_variance": steps[1]}
    for f in list(files.values()) + [path]:
        f.unlink()
    return {"modes": out, "quality": quality, "shape": exp.shape}


def process_again(repo, did: dict):
    """process_eimage.run on the visit, in this process: the calexp as the stage makes it (never quantized yet)
    and the full-resolution background it subtracted."""
    from twinkles.stages import process_eimage
    eimage = repo.get("eimage", did)
    return process_eimage.run(eimage, repo.get("ref_cat", {}), process_eimage.Config(), did)


def check_background(repo, did: dict, result) -> dict:
    model = repo.get("calexp_background", did)
    diff = np.abs(model.image() - result.background)
    rms = float(result.metadata["sky_rms_e"])
    ref = repo.find("calexp_background", did)
    return {"bytes": (repo.root / ref.path).stat().st_size, "full_image_bytes": result.background.nbytes,
            "max_diff_sky_sigma": float(diff.max() / rms), "mesh": list(model.mesh.shape), "sky_rms_e": rms}


def uncompressed_sizes(repo, workdir: Path) -> dict:
    """Bytes each image dataset of the visit would take uncompressed (written again with mode none)."""
    from twinkles.compression import NO_COMPRESSION
    from twinkles.repo.datasets import IMAGE_STORAGE, get_dataset_type
    from twinkles.repo.storage import write_dataset_file
    out = {}
    with repo.read_only() as conn:
        rows = conn.execute("SELECT dataset_type, run, data_id FROM datasets").fetchall()
    for r in rows:
        dt = get_dataset_type(r["dataset_type"])
        if dt.storage not in IMAGE_STORAGE:
            continue
        ref = [x for x in repo.query(dt.name, runs=[r["run"]]) if x.key == r["data_id"]][0]
        path = workdir / "plain.fits"
        write_dataset_file(repo.read(ref), dt.storage, path, durable=False, compression=NO_COMPRESSION)
        out[dt.name] = out.get(dt.name, 0) + path.stat().st_size
        path.unlink()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="folder for the repository (default: a temporary one, removed at the end)")
    ap.add_argument("--repeat", type=int, default=3, help="timings: median of this many runs (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args(argv)
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="bench_storage-"))
    try:
        return _main(workdir, args)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _main(workdir: Path, args) -> int:
    from twinkles.repo import Repository
    twinkles = str(Path(sys.executable).with_name("twinkles"))
    repo_path = workdir / "repo"
    if not (repo_path / "registry.sqlite3").exists():
        print("simulating one twinkles1 visit (4096 x 4096) ...", flush=True)
        t_sim = _run([twinkles, "simulate", str(repo_path), "--preset", "twinkles1", "--visits", "1"], workdir)
        print(f"  {t_sim:.0f} s", flush=True)
    repo = Repository(repo_path)
    if not repo.query("calexp"):
        print("running the pipeline that exists (twinkles run --workers 1) ...", flush=True)
        t_run = _run([twinkles, "run", str(repo_path), "--workers", "1", "--no-progress"], workdir)
        print(f"  {t_run:.0f} s", flush=True)
    ref = repo.query("calexp")[0]
    did = ref.data_id

    print("processing the visit again in this process (the calexp as the stage makes it, unquantized, and the "
          "background it subtracted) ...", flush=True)
    result = process_again(repo, did)
    print(f"\n1. one {ref.dataset_type} (visit {did['visit']}), written by the repository's writer (atomic, "
          f"checksummed) and read back; medians of {args.repeat}", flush=True)
    cal = bench_calexp(repo, result.calexp, did, workdir, args.repeat)
    modes = cal["modes"]
    print(f"  {'writer / mode':18s} {'MB':>7s} {'write CPU s':>11s} {'write wall':>10s} {'read CPU s':>10s} "
          f"{'read wall':>9s} {'cold wall':>9s}")
    for name, m in modes.items():
        print(f"  {name:18s} {m['bytes'] / 1e6:7.1f} {m['write']['cpu_s']:11.2f} {m['write']['wall_s']:10.2f} "
              f"{m['read']['cpu_s']:10.2f} {m['read']['wall_s']:9.2f} {m['read_cold']['wall_s']:9.2f}")
    none, lossy = modes["astropy none"], modes["astropy lossy"]
    print(f"  lossy / none: size {lossy['bytes'] / none['bytes']:.3f} ({lossy['bytes'] / 1e6:.1f} MB; goal <= 40), "
          f"write CPU overhead {lossy['write']['cpu_s'] - none['write']['cpu_s']:+.2f} s (goal <= 0.5), "
          f"read wall {lossy['read']['wall_s'] / none['read']['wall_s']:.2f}x warm, "
          f"{lossy['read_cold']['wall_s'] / none['read_cold']['wall_s']:.2f}x cold (goal <= 1)")
    q = cal["quality"]
    print(f"\n2. lossy quantization on this calexp: image error max {q['image_err_max_sigma']:.4f} sigma "
          f"(goal < 1/16 = 0.0625), RMS {q['image_err_rms_sigma']:.4f} sigma (goal < 0.02), mean "
          f"{q['image_err_mean_sigma']:+.1e} sigma; variance relative error max {q['variance_rel_err_max']:.1e}; "
          f"steps {q['step_image']:.3f} e- (image), {q['step_variance']:.3f} e-^2 (variance); masks identical: "
          f"{q['mask_identical']}; lossless identical: {q['lossless_identical']}; fitsio reads the same: "
          f"{q['fitsio_reads_same']}")
    print("\n3. background model against the background the stage subtracted", flush=True)
    b = check_background(repo, did, result)
    print(f"  calexp_background: {b['bytes'] / 1e3:.1f} kB (mesh {b['mesh'][0]} x {b['mesh'][1]}) instead of "
          f"{b['full_image_bytes'] / 1e6:.1f} MB; rebuilt vs subtracted background: max "
          f"{b['max_diff_sky_sigma']:.2e} sky sigma (goal < 0.01; sky rms {b['sky_rms_e']:.1f} e-)")
    print("\n4. bytes per visit by dataset type (registry sizes), and uncompressed", flush=True)
    disk = repo.disk_usage()
    plain = uncompressed_sizes(repo, workdir)
    nvis = max(1, len(disk["visits"]))
    total_plain = 0
    print(f"  {'dataset type':28s} {'MB per visit':>12s} {'uncompressed':>12s}")
    for name, t in disk["types"].items():
        per = t["bytes_per_visit"] if t["bytes_per_visit"] is not None else t["bytes"] / nvis
        unc = plain.get(name, t["bytes"]) / (t["visits"] or nvis)
        total_plain += unc
        tag = "" if t["bytes_per_visit"] is not None else "  (field-wide, / visits)"
        print(f"  {name:28s} {per / 1e6:12.2f} {unc / 1e6:12.2f}{tag}")
    total = sum((t["bytes_per_visit"] if t["bytes_per_visit"] is not None else t["bytes"] / nvis)
                for t in disk["types"].values())
    print(f"  {'all':28s} {total / 1e6:12.2f} {total_plain / 1e6:12.2f}   ({total / total_plain:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
