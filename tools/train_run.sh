# The studies' training step, sourced by tools/glyph_sweep.sh, tools/glyph_warm.sh, tools/glyph_body.sh and
# tools/budget_warm.sh: one run of ${CONFIG:-configs/glyphs.toml} into $out/NAME, one thread, resumed where it
# stopped; a finished run is skipped.
hs=${HYPERSAN:-hypersan}
run() {  # name, then --set overrides
    local name=$1; shift
    if [ -f "$out/$name/done" ] || tail -n 1 "$out/$name.log" 2>/dev/null | grep -q '^checkpoint written'; then
        touch "$out/$name/done"; echo "skip $name"; return
    fi
    local args=()
    for s in "$@"; do args+=(--set "$s"); done
    local resume=()
    [ -d "$out/$name" ] && resume=(--resume)
    echo "$(date +%T) train $name"
    $hs train --config "${CONFIG:-configs/glyphs.toml}" --out "$out/$name" "${resume[@]}" "${args[@]}" \
        --set train.threads=1 --set train.progress=false > "$out/$name.log" 2>&1
    touch "$out/$name/done"
    echo "$(date +%T) done $name"
}
