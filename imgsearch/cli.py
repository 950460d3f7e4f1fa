"""The `imgsearch` command.

    imgsearch index DIR -o photos.isx [--extractor NAME|PATH] [--weights PATH] [--mean ..] [--std ..]
                    [--index hnsw|flat|kdtree]
    imgsearch search photos.isx QUERY... [-k K] [--include-self] [--json] [--html results.html]
    imgsearch dups DIR [--threshold T] [--extractor ...] [--json]
    imgsearch eval DIR [--labels labels.csv] [--extractor ...] [--index ...] [--json]
    imgsearch info photos.isx
    imgsearch serve photos.isx [--host 127.0.0.1] [--port 8000] [--token T] [--allow-add]

Results go to stdout, progress and messages to stderr; ranks start at 1 in
text and JSON alike.  Inputs are checked before anything is indexed: the
folder holds images, ``-o`` can be written, labels name images in the folder.
Exit status: 0 on success, 1 when the command ran but something failed (e.g.
unreadable files while indexing, with --strict), 2 for usage errors and
unusable inputs (an empty folder among them), 141 (as for SIGPIPE) when the
reader of stdout went away, quietly.
"""
import argparse
import json
import os
import sys
import tempfile

__all__ = ["main"]


def _floats(text):
    try:
        vals = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, e.g. 0.5,0.5,0.5; found {text!r}") from None
    if len(vals) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected 1 or 3 numbers, found {len(vals)}")
    return vals * 3 if len(vals) == 1 else vals


def _extractor_args(p):
    p.add_argument("--extractor", default="colorhist",
                   help="colorhist, lbp, colorhist+lbp, phash, dhash, a model name (mobilenet_v2, resnet50, ...) "
                        "or a TorchScript file")
    p.add_argument("--weights", help="weights file for a named model (nothing is downloaded)")
    p.add_argument("--mean", type=_floats, help="normalisation mean, e.g. 0.485,0.456,0.406 (torch models)")
    p.add_argument("--std", type=_floats, help="normalisation std, e.g. 0.229,0.224,0.225 (torch models)")
    p.add_argument("--size", type=int, help="input size of a torch model (default 224)")
    p.add_argument("--batch-size", type=int, help="images per model call (torch models)")
    p.add_argument("--index", default="hnsw", choices=["hnsw", "flat", "kdtree"], help="index type (default hnsw)")
    p.add_argument("--threads", type=int, help="decoding threads (default: all CPUs)")


def _engine(args):
    from .engine import ImageSearch
    params = {}
    for key in ("mean", "std", "size", "batch_size"):
        v = getattr(args, key, None)
        if v is not None:
            params[key] = v
    return ImageSearch(extractor=args.extractor, index=args.index, weights=args.weights,
                       extractor_params=params, threads=args.threads)


def _say(*a):
    print(*a, file=sys.stderr, flush=True)


def _image_files(folder):
    """The image files under ``folder``; a missing or imageless folder is unusable input."""
    from .engine import IMAGE_EXTENSIONS, list_images
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a folder")
    files = list_images(folder)
    if not files:
        raise ValueError(f"no image files under {folder!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _check_writable(output):
    """Fail before indexing, not after, when the engine file cannot be written."""
    path = os.path.abspath(output)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ValueError(f"-o {output!r} is a folder; expected a file name such as photos.isx")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"-o {output!r}: the folder {folder!r} does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".imgsearch-", suffix=".tmp"):
            pass
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionError("the file is read-only")
    except OSError as e:
        raise PermissionError(f"-o {output!r}: cannot write there ({e.strerror or e})") from None


def _add(engine, folder):
    report = engine.add(folder)
    _say(f"indexed {report.added + report.updated} images in {report.seconds:.1f} s "
         f"({(report.added + report.updated) / max(report.seconds, 1e-9):.1f} images/s)"
         + (f"; {len(report.failed)} unreadable:" if report.failed else ""))
    for path, reason in report.failed:
        _say(f"  skipped {path}: {reason}")
    if len(engine) == 0:
        raise ValueError(f"none of the image files under {folder!r} could be read")
    return report


def cmd_index(args):
    _image_files(args.dir)
    _check_writable(args.output)
    engine = _engine(args)
    report = _add(engine, args.dir)
    engine.save(args.output)
    ex = engine.extractor
    _say(f"saved {len(engine)} images ({ex.name}, {ex.dim}-d, {args.index}) to {args.output}")
    return 1 if (report.failed and args.strict) else 0


def cmd_search(args):
    from .engine import ImageSearch
    engine = ImageSearch.load(args.index_file)
    kw = {"ef": args.ef} if args.ef else {}
    res = engine.search(args.queries, k=args.k, exclude_self=not args.include_self, **kw)
    if args.html:
        res.save_html(args.html, title=f"imgsearch: {len(args.queries)} queries")
        _say(f"wrote {args.html}")
    if args.json:
        json.dump(res.to_json(), sys.stdout, indent=1)
        print()
    else:
        for q, query in enumerate(args.queries):
            print(f"# {query}")
            for h in res[q]:
                print(f"{h['rank']}\t{h['distance']:.6g}\t{h['path'] if h['path'] is not None else h['id']}")
    return 0


def cmd_dups(args):
    _image_files(args.dir)
    engine = _engine(args)
    _add(engine, args.dir)
    groups = engine.duplicates(threshold=args.threshold, k=args.k)
    if args.json:
        json.dump({"groups": [g.to_json() for g in groups]}, sys.stdout, indent=1)
        print()
    else:  # one group a line: its largest pairwise distance, then its files
        for g in groups:
            print(f"{g.max_distance:.6g}\t" + "\t".join(str(p) for p in g))
        _say(f"{len(groups)} groups of near-duplicates ({sum(len(g) for g in groups)} images)")
    return 0


def _eval_labels(args, files):
    """What to evaluate against, checked against the folder's files before indexing:
    --labels, else DIR/labels.csv when there is one, else the sub-folder names."""
    from .datasets import read_labels_csv
    from .engine import canonical_path, check_labels, label_paths
    csv_path = args.labels or os.path.join(args.dir, "labels.csv")
    if not args.labels and not os.path.isfile(csv_path):
        labels = "folders"
    else:
        labels = read_labels_csv(csv_path, root=args.dir)
        if args.labels is None:
            _say(f"labels from {csv_path}")
    files = [canonical_path(f) for f in files]
    found = label_paths(labels, files)
    if isinstance(labels, dict) and not found:
        example = next(iter(labels))
        raise ValueError(f"{csv_path}: none of its {len(labels)} paths is an image under {args.dir!r}. "
                         f"Relative paths are resolved against DIR ({os.path.abspath(args.dir)}), so its first "
                         f"row means {example!r}; absolute paths are used as they are. Write the paths relative "
                         "to DIR, or give the DIR they are relative to")
    if isinstance(labels, dict) and len(found) < len(files):
        _say(f"{len(files) - len(found)} of the {len(files)} images under {args.dir} have no label in "
             f"{csv_path}: they are searched but not evaluated")
    check_labels(found, "folders" if labels == "folders" else csv_path, example_path=next(iter(found), None))
    return labels


def cmd_eval(args):
    labels = _eval_labels(args, _image_files(args.dir))
    engine = _engine(args)
    _add(engine, args.dir)
    res = engine.evaluate(labels, k=args.k)
    if "mAP" not in res:  # over the first k ranks only; "mAP" is always there for scripts
        res["mAP"] = res[f"mAP@{res['k']}"]
    res["extractor"] = engine.extractor.name
    res["index"] = args.index
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        for key, v in res.items():
            print(f"{key}\t{v:.4f}" if isinstance(v, float) else f"{key}\t{v}")
    return 0


def cmd_info(args):
    from .engine import read_info
    info = read_info(args.index_file)  # no extractor is built: no torch needed
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        ex = info.pop("extractor")
        for key, v in info.items():
            print(f"{key}\t{v}")
        print(f"extractor\t{ex.get('name')} ({json.dumps(ex)})")
    return 0


def cmd_serve(args):
    from . import service  # FastAPI and uvicorn: the [serve] extra, imported only here
    token = args.token or os.environ.get("IMGSEARCH_TOKEN")
    service.check_host(args.host, token)  # before loading a large engine
    shown = f"[{args.host}]" if ":" in args.host else args.host
    _say(f"imgsearch: serving {args.index_file} at http://{shown}:{args.port}/ "
         f"({'changes allowed' if args.allow_add else 'read-only'}{', token required' if token else ''}); "
         "Ctrl-C stops")
    service.serve(args.index_file, host=args.host, port=args.port, token=token, allow_add=args.allow_add,
                  background=False, log_level="info", upload_dir=args.upload_dir, roots=args.root,
                  max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_megapixels=args.max_megapixels)
    return 0


def build_parser():
    ap = argparse.ArgumentParser(prog="imgsearch", description="Content-based image search.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a folder of images into a file")
    p.add_argument("dir")
    p.add_argument("-o", "--output", required=True, help="the engine file to write (e.g. photos.isx)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file was unreadable")
    _extractor_args(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search an indexed file with query images")
    p.add_argument("index_file")
    p.add_argument("queries", nargs="+")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--ef", type=int, help="HNSW search breadth")
    p.add_argument("--include-self", action="store_true",
                   help="list a query that is in the index among its own hits (rank 1, distance 0)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--html", help="also write an HTML page with thumbnails")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("dups", help="find groups of near-duplicate images in a folder")
    p.add_argument("dir")
    p.add_argument("--threshold", type=float, help="largest distance counted as a duplicate")
    p.add_argument("-k", type=int, default=10, help="neighbours examined per image")
    p.add_argument("--json", action="store_true")
    _extractor_args(p)
    p.set_defaults(func=cmd_dups, extractor="phash")

    p = sub.add_parser("eval", help="retrieval quality (mAP, precision@k) on a labelled folder")
    p.add_argument("dir")
    p.add_argument("--labels", help="CSV with path,label columns, paths relative to DIR; "
                                    "default: DIR/labels.csv when there is one, else the sub-folder names")
    p.add_argument("-k", type=int, help="ranks for mAP (default: all)")
    p.add_argument("--json", action="store_true")
    _extractor_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="describe an indexed file")
    p.add_argument("index_file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="an HTTP search service and browser page over an indexed file")
    p.add_argument("index_file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                                                        "only; any other needs --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="required from clients (Authorization: Bearer T); default $IMGSEARCH_TOKEN")
    p.add_argument("--allow-add", action="store_true", help="accept POST /images and DELETE /images/{id}; "
                                                            "changes are saved to INDEX_FILE")
    p.add_argument("--upload-dir", help="where added images are stored (default: INDEX_FILE without .isx + .uploads)")
    p.add_argument("--root", action="append", help="a folder whose files may be served (repeatable; default: "
                                                   "the folders of the indexed files)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload per image (default 20)")
    p.add_argument("--max-megapixels", type=float, default=40.0, help="largest image to decode (default 40)")
    p.set_defaults(func=cmd_serve)
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if getattr(args, "k", None) is not None and args.k <= 0:
        ap.error(f"-k: expected a positive number, found {args.k}")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return code
    except BrokenPipeError:
        # the reader went away (imgsearch search ... | head): stop quietly, and point
        # stdout at /dev/null so that the interpreter's own flush at exit stays quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except (FileNotFoundError, ValueError, TypeError, ImportError, OSError) as e:
        _say(f"imgsearch {args.command}: error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
