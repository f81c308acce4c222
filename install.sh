#!/usr/bin/env bash
# Idempotent set-up of veri-box in ./.venv.
#   ./install.sh         the server, the training stack, and bubblewrap (the trainers' sandbox)
#                        where apt-get and root or sudo are at hand
#   ./install.sh --dev   also the test tools: Python ones, Debian's chromium, openssh-server,
#                        slurm and munge (the tests start their own daemons)
#   ./install.sh --vllm  also vLLM (GPU machines: its wheels are CUDA builds), which GRPO's
#                        use_vllm and deployments on a GPU then use
# TORCH_SPEC overrides which torch is installed when none is (default: torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"

dev=0
vllm=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    --vllm) vllm=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $arg (try --help)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: veri-box needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first and pinned: left to the resolver, a bare `torch` requirement pulls whatever
# build is newest, which is needlessly large on a CPU-only machine.
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "==> installing ${TORCH_SPEC:-torch==2.13.0}"
  "${pip[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi

echo "==> installing veri-box"
if [ "$dev" = 1 ]; then
  "${pip[@]}" -e '.[dev]'
else
  "${pip[@]}" -e .
fi

# vLLM into the same .venv: GRPO's use_vllm imports it in the trainer's own interpreter, and
# a deployment's serving process runs it there too. 0.31.0 because it is the newest vLLM that
# TRL 1.16 supports (0.22.0 to 0.31.0) and it pins torch==2.13.0, the torch installed above (a
# CUDA build on a GPU machine, through TORCH_SPEC); it wants transformers >=5.10.4,<5.18, so pip
# moves transformers to such a version. About 1.5 minutes and 5.8 GB with its CUDA libraries.
# Never in --dev: the CI machines have no GPU, and the tests use a stand-in (tests/vllm_standin).
if [ "$vllm" = 1 ]; then
  torch_build=$(.venv/bin/python -c 'import torch; print(torch.__version__)')
  # vLLM's wheels are CUDA builds, and beside a CPU torch pip adds CUDA torchvision/torchaudio
  # wheels that do not load against it, which breaks transformers' imports: refuse, change nothing.
  case "$torch_build" in
    *+cpu*)
      echo "install.sh: vLLM not installed: its wheels need a CUDA build of torch 2.13.0 and this .venv has" \
        "torch $torch_build. On a GPU machine remove .venv and run ./install.sh --vllm again where pip takes" \
        "the CUDA build (PyPI's default on Linux, or TORCH_SPEC naming one)." >&2
      exit 1 ;;
  esac
  torch_now=${torch_build%%+*}
  echo "==> installing vllm==0.31.0 (keeping torch $torch_now)"
  [ "$torch_now" = 2.13.0 ] || echo "install.sh: vllm 0.31.0 needs torch 2.13.0; pip will replace torch $torch_now" >&2
  "${pip[@]}" "vllm==0.31.0" "torch==2.13.0"
  if ! .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    echo "install.sh: vLLM is installed but this machine has no CUDA GPU it can use: deployments on the cpu pool" \
      "keep serving with transformers" >&2
  fi
fi

# The sandbox trainers run in (veri-box serve --sandbox). Without it the box still works, and
# says loudly at start that reward functions run unconfined: never fail the install for it.
if ! command -v bwrap >/dev/null 2>&1; then
  sudo_=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo_="sudo"; else sudo_="none"; fi
  fi
  if [ "$sudo_" != none ] && command -v apt-get >/dev/null 2>&1; then
    echo "==> installing bubblewrap (the trainers' sandbox)"
    { $sudo_ apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q bubblewrap; } ||
      echo "install.sh: could not install bubblewrap; trainers will run without a sandbox" >&2
  else
    echo "install.sh: bubblewrap is not installed and cannot be here (needs root or sudo, and apt-get);" \
      "trainers will run without a sandbox until it is: apt-get install bubblewrap" >&2
  fi
fi

# The test tools that are programs, not Python packages: Debian's chromium (browser tests), an
# OpenSSH server (the provider stand-ins' "instances"), and Slurm with munge (a one-node
# cluster). The tests start and stop them; the packages do not start daemons here.
if [ "$dev" = 1 ]; then
  wanted=()
  command -v chromium >/dev/null 2>&1 || wanted+=(chromium)
  [ -x /usr/sbin/sshd ] || wanted+=(openssh-server)
  command -v rsync >/dev/null 2>&1 || wanted+=(rsync)
  [ -x /usr/sbin/slurmctld ] || wanted+=(slurmctld)
  [ -x /usr/sbin/slurmd ] || wanted+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || wanted+=(slurm-client)
  [ -x /usr/sbin/munged ] || wanted+=(munge)
  if [ "${#wanted[@]}" -gt 0 ]; then
    echo "==> installing test tools: ${wanted[*]}"
    sudo_=""
    [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -q "${wanted[@]}"
  fi
fi

echo "==> done: start the box with .venv/bin/veri-box serve"
