# bash completion for containerd-shim-stockade-v2 (installed by the Debian package as
# /usr/share/bash-completion/completions/containerd-shim-stockade-v2).
# Completes the operator commands only; containerd's own calls are not for humans.
# shellcheck disable=SC2207 # COMPREPLY=($(compgen ...)): bash-completion's idiom

_containerd_shim_stockade_v2_sandboxes()
{
    # The ids of the running VM sandboxes: `sandboxes` prints a header line, then
    # NAMESPACE SANDBOX DIR per sandbox.
    "$1" ${2:+--state-dir "$2"} sandboxes 2>/dev/null | awk 'NR > 1 { print $2 }'
}

_containerd_shim_stockade_v2()
{
    local cur prev words cword
    _init_completion || return

    local commands="check sandboxes console agent-log pool install uninstall"
    local install_opts="--config --runtime-name --shim-config --containerd-version --root --dry-run --help"

    # The command word, and a --state-dir given before it.
    local i cmd="" cmd_at=0 state_dir=""
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
            --state-dir)
                state_dir=${words[i + 1]:-}
                ((i++))
                ;;
            -*) ;;
            *)
                cmd=${words[i]}
                cmd_at=$i
                break
                ;;
        esac
    done

    if [[ -z $cmd ]]; then
        case $prev in
            --state-dir)
                _filedir -d
                return
                ;;
        esac
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W '--state-dir --version --help' -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return
    fi

    case $cmd in
        check | sandboxes)
            [[ $prev == --state-dir ]] && _filedir -d && return
            [[ $cur == -* ]] && COMPREPLY=($(compgen -W '--state-dir' -- "$cur"))
            ;;
        console | agent-log)
            case $prev in
                --state-dir)
                    _filedir -d
                    return
                    ;;
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W '--state-dir' -- "$cur"))
                return
            fi
            # One sandbox id, right after the command.
            local j
            for ((j = cmd_at + 1; j < cword; j++)); do
                case ${words[j]} in
                    --state-dir)
                        state_dir=${words[j + 1]:-}
                        ((j++))
                        ;;
                    *) return ;;
                esac
            done
            COMPREPLY=($(compgen -W "$(_containerd_shim_stockade_v2_sandboxes \
                "${words[0]}" "$state_dir")" -- "$cur"))
            ;;
        pool)
            case $prev in
                --config)
                    _filedir toml
                    return
                    ;;
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W '--config' -- "$cur"))
            elif ((cword == cmd_at + 1)); then
                COMPREPLY=($(compgen -W 'status' -- "$cur"))
            fi
            ;;
        install | uninstall)
            case $prev in
                --config | --shim-config)
                    _filedir
                    return
                    ;;
                --root)
                    _filedir -d
                    return
                    ;;
                --runtime-name | --containerd-version)
                    return
                    ;;
            esac
            if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "$install_opts" -- "$cur"))
                return
            fi
            # The target, once.
            local j
            for ((j = cmd_at + 1; j < cword; j++)); do
                case ${words[j]} in
                    docker | containerd) return ;;
                esac
            done
            COMPREPLY=($(compgen -W 'docker containerd' -- "$cur"))
            ;;
    esac
} &&
    complete -F _containerd_shim_stockade_v2 containerd-shim-stockade-v2

# ex: filetype=sh
