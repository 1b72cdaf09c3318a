"""Print what a pipeline run produced for a dataset version: counts, metrics, and where everything is."""
import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfospipe import fs, paths, serving


def _latest_run(layout, version):
    """The committed training run of ``version`` with the newest _SUCCESS, or None."""
    names = [r.rstrip("/") for r in fs.listdir(layout.model_runs(version))]
    # hidden entries (a run's .staging-/.trash- leftovers) are no run ids
    runs = [r for r in names if not r.startswith(".") and fs.is_committed(layout.model_run(version, r))]
    if not runs:
        return None
    return max(runs, key=lambda r: fs.mtime(paths.join(layout.model_run(version, r), fs.SUCCESS)))


def main(argv: list[str] | None = None) -> None:
    """Print what the run of the version in ``argv`` (default: sys.argv[1:]) produced; fails when the
    version was never converted."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True, help="data root")
    p.add_argument("--version", required=True, help="dataset version")
    p.add_argument("--run-id", default=None, help="training run (default: the latest finished one)")
    args = p.parse_args(argv)
    layout = paths.Layout(args.root)
    out = []
    conv = fs.read_json(paths.join(fs.resolve(layout.tfrecords(args.version)), fs.MANIFEST))
    out.append(f"convert   {conv['rows_read']} rows read, {conv['rows_written']} written "
               f"(train {conv['splits'].get('train')}, eval {conv['splits'].get('eval')}), "
               f"{conv['rows_quarantined']} quarantined, image {conv['image_shape']}, {conv['seconds']} s")
    out.append(f"          -> {layout.tfrecords(args.version)}")
    run = paths.run_slug(args.run_id) if args.run_id else _latest_run(layout, args.version)
    if run:
        tm = fs.read_json(paths.join(layout.model_run(args.version, run), fs.MANIFEST))
        out.append(f"train     {tm['params']['cluster_size']} TFoS nodes, {tm['steps_run']} steps, final loss "
                   f"{tm['final_loss']:.4f}, train accuracy {tm['final_accuracy']:.4f}, {tm['train_seconds']} s")
        out.append(f"          -> SavedModel {tm['model_dir']}")
        report = paths.join(fs.resolve(layout.validation(args.version, run)), paths.METRICS_FILE)
        if fs.exists(report):
            vm = fs.read_json(report)
            c = vm["candidate"]
            champ = f", serving model before: {vm['champion']['accuracy']:.4f}" if vm["champion"] else ""
            out.append(f"validate  eval accuracy {c['accuracy']:.4f}, loss {c['loss']:.4f} on {c['examples']} "
                       f"examples{champ}: {'PASSED' if vm['passed'] else 'REJECTED ' + '; '.join(vm['failed_rules'])}")
            if vm.get("promotion"):
                out.append(f"          promotion {vm['promotion']['decision']}: {vm['promotion']['rule']}")
            out.append(f"          -> {report}")
    now = serving.current(layout)
    if now:
        out.append(f"serving   {now['model_version']} -> {now['path']}")
    pred = layout.predictions(args.version)
    if fs.is_committed(pred):
        pm = fs.read_json(paths.join(fs.resolve(pred), fs.MANIFEST))
        out.append(f"infer     {pm['rows_out']} predictions for {pm['rows_in']} {pm['split']} rows with "
                   f"{pm['model_version']} ({pm['model_loads']} model loads, {pm['partitions']} partitions), "
                   f"{pm['seconds']} s")
        out.append(f"          -> {pred} (Parquet)")
    print("\n".join(out))


if __name__ == "__main__":
    main()
