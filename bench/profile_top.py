"""Summarise py-spy's collapsed stacks: `python -m bench.profile_top FILE... [--filter SUBSTR]`, the frames
with the most samples (inclusive), so the cost of each step of a request or a task shows."""
import collections
import sys


def main(paths, filt=None, top=45):
    inclusive = collections.Counter()
    own = collections.Counter()
    total = 0
    for path in paths:
        with open(path) as f:
            for line in f:
                stack, _, n = line.rstrip().rpartition(" ")
                n = int(n)
                total += n
                own[stack.split(";")[-1]] += n
                seen = set()
                for frame in stack.split(";"):
                    if filt and filt not in frame:
                        continue
                    if frame not in seen:
                        seen.add(frame)
                        inclusive[frame] += n
    print(f"{total} samples; inclusive:")
    for frame, n in inclusive.most_common(top):
        print(f"{100 * n / total:5.1f}%  {frame[:150]}")
    print("self:")
    for frame, n in own.most_common(top // 2):
        print(f"{100 * n / total:5.1f}%  {frame[:150]}")


if __name__ == "__main__":
    args = sys.argv[1:]
    filt = None
    if "--filter" in args:
        i = args.index("--filter")
        filt = args[i + 1]
        del args[i:i + 2]
    main(args, filt)
