"""Shell completion: one completer in Python, called by thin bash, zsh and fish scripts and by kubectl.

``jobgate __complete WORD...`` prints the candidates for the last WORD (the
one being typed, possibly empty), one per line, then ``:N``, a cobra shell
directive (kubectl's plugin completion protocol: kubectl >= 1.26 runs
``kubectl_complete-jobgate WORD...`` and reads exactly this). Commands, flags
and -o values come from the parser itself; policy, Job, namespace and context
names are read from the cluster with the flags typed so far, and nothing is
offered when it cannot be reached within a couple of seconds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# cobra's ShellCompDirective values, which kubectl passes on to the shell.
DEFAULT = 0  # the shell may complete file names when there are no candidates
NO_SPACE = 2
NO_FILES = 4
COMPLETION_TIMEOUT = 3.0  # seconds for a read made while the user presses TAB

OUTPUT_VALUES = ("table", "wide", "json", "yaml", "name", "jsonpath=")
JOB_COMMANDS = ("why", "hold", "unhold", "prioritize")
POLICY_COMMANDS = ("status", "queue")
VALUE_NAMES = {"-n": "namespace", "--namespace": "namespace", "--context": "context"}

Names = Callable[[str, dict[str, str]], list[str]]  # (what, cluster flags typed so far) -> names


def complete(parser: argparse.ArgumentParser, words: Sequence[str], names: Names) -> tuple[list[str], int]:
    """Candidates for ``words[-1]`` after ``words[:-1]`` (the words after the program's name)."""
    *before, current = words or [""]
    commands = _subcommands(parser)
    command: str | None = None
    flags: dict[str, str] = {}
    positionals = 0
    expecting: str | None = None
    for word in before:
        if expecting is not None:
            flags[expecting] = word
            expecting = None
        elif word.startswith("-"):
            option, eq, value = word.partition("=")
            if _takes_value(parser if command is None else commands[command], option) and not eq:
                expecting = option
            elif eq:
                flags[option] = value
        elif command is None:
            command = word if word in commands else command
        else:
            positionals += 1
    active = parser if command is None else commands.get(command, parser)
    if expecting is not None:
        return _values(expecting, current, flags, names)
    if current.startswith("-"):
        return _matching(_options(active) + (_options(parser) if active is not parser else []), current), NO_FILES
    if command is None:
        return _matching(sorted(c for c in commands if not c.startswith("_")), current), NO_FILES
    if command in JOB_COMMANDS and (command != "prioritize" or positionals == 0):
        return _matching(names("jobs", _cluster_flags(flags)), current), NO_FILES
    if command in POLICY_COMMANDS and positionals == 0:
        return _matching(names("policies", _cluster_flags(flags)), current), NO_FILES
    if command == "completion" and positionals == 0:
        return _matching(["bash", "fish", "zsh"], current), NO_FILES
    return [], NO_FILES


def _values(option: str, current: str, flags: dict[str, str], names: Names) -> tuple[list[str], int]:
    if option in ("-o", "--output"):
        return _matching(list(OUTPUT_VALUES), current), NO_FILES | (NO_SPACE if current.startswith("j") else 0)
    if option == "--kubeconfig":
        return [], DEFAULT  # file names, from the shell
    if option in VALUE_NAMES:
        return _matching(names(VALUE_NAMES[option] + "s", _cluster_flags(flags)), current), NO_FILES
    return [], NO_FILES


def _cluster_flags(flags: dict[str, str]) -> dict[str, str]:
    aliases = {"-n": "namespace", "--namespace": "namespace", "--context": "context", "--kubeconfig": "kubeconfig"}
    return {aliases[k]: v for k, v in flags.items() if k in aliases}


def _matching(candidates: Sequence[str], prefix: str) -> list[str]:
    return [c for c in dict.fromkeys(candidates) if c.startswith(prefix)]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--") or len(option) == 2
    ]


def _takes_value(parser: argparse.ArgumentParser, option: str) -> bool:
    action = parser._option_string_actions.get(option)
    return action is not None and action.nargs != 0


def cluster_names(what: str, flags: dict[str, str]) -> list[str]:
    """Names read from the cluster for completion; nothing if it cannot be read quickly."""
    import logging
    import warnings

    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    try:
        from jobgate.cli.reader import connect, kubeconfig_contexts

        if what == "contexts":
            return kubeconfig_contexts(flags.get("kubeconfig"))
        cluster = connect(flags.get("kubeconfig"), flags.get("context"), COMPLETION_TIMEOUT)
        try:
            namespace = flags.get("namespace") or cluster.namespace
            if what == "namespaces":
                return cluster.namespace_names()
            if what == "policies":
                return sorted({p.name for p in cluster.policies(namespace)})
            return sorted(j.name for j in cluster.jobs(namespace) if not j.finished)
        finally:
            cluster.close()
    except Exception:  # completion must never print an error into the user's command line
        return []


def complete_command(words: Sequence[str], prog: str = "jobgate") -> str:
    from jobgate.cli.main import build_parser

    candidates, directive = complete(build_parser(prog), words, cluster_names)
    return "".join(f"{c}\n" for c in candidates) + f":{directive}\n"


def kubectl_complete() -> int:
    """The `kubectl_complete-jobgate` executable: kubectl passes the words after `kubectl jobgate`."""
    sys.stdout.write(complete_command(sys.argv[1:], "kubectl jobgate"))
    return 0


def script(shell: str, prog: str) -> str:
    """The completion script for ``shell``; it completes both `jobgate` and `kubectl-jobgate`."""
    return {"bash": BASH, "zsh": ZSH, "fish": FISH}[shell].replace("PROG", prog)


BASH = r"""# bash completion for PROG: source <(PROG completion bash)
_jobgate_complete() {
    local cur="${COMP_WORDS[COMP_CWORD]}" IFS=$'\n' out directive line
    local -a candidates=()
    out=$("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null) || return
    for line in $out; do
        if [[ $line == :* ]]; then directive=${line#:}; else candidates+=("$line"); fi
    done
    if (( ${#candidates[@]} )); then
        COMPREPLY=("${candidates[@]}")
        (( directive & 2 )) && compopt -o nospace 2>/dev/null
    elif (( ! (directive & 4) )); then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}
complete -F _jobgate_complete jobgate kubectl-jobgate
"""

ZSH = r"""#compdef jobgate kubectl-jobgate
# zsh completion for PROG: PROG completion zsh > "${fpath[1]}/_jobgate", or source <(PROG completion zsh)
_jobgate() {
    local -a lines candidates
    local directive
    lines=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    directive=${${lines[-1]}#:}
    candidates=("${(@)lines[1,-2]}")
    if (( ${#candidates} )); then
        if (( directive & 2 )); then compadd -S '' -a candidates; else compadd -a candidates; fi
    elif (( ! (directive & 4) )); then
        _files
    fi
}
if [[ "$funcstack[1]" == "_jobgate" ]]; then
    _jobgate "$@"
else
    compdef _jobgate jobgate kubectl-jobgate
fi
"""

FISH = r"""# fish completion for PROG: PROG completion fish > ~/.config/fish/completions/jobgate.fish
function __jobgate_complete
    set -l tokens (commandline -opc) (commandline -ct)
    for line in ($tokens[1] __complete $tokens[2..-1] 2>/dev/null)
        string match -q -- ':*' $line; or echo $line
    end
end
complete -c jobgate -f -a '(__jobgate_complete)'
complete -c kubectl-jobgate -f -a '(__jobgate_complete)'
"""
