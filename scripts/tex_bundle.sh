#!/usr/bin/env bash
# Build a relocatable, self-contained TeX bundle (latex = pdfTeX in DVI mode with the LaTeX format, dvipng,
# kpsewhich) from this machine's Debian TeX Live, for machines that have no TeX (the GPU box).
#
# Build (here, on a machine with TeX Live + dvipng + preview-latex-style installed):
#     bash scripts/tex_bundle.sh .carry/tex            # -> .carry/tex/tex.tar.xz (+ .carry/tex/activate.sh copy)
#   The PSNFSS fonts (times, palatino, bookman) come from the system tree when texlive-fonts-recommended is
#   installed, else from its .deb (TFR_DEB=/path/to.deb, or fetched with `apt-get download`, nothing installed).
#   TEXBUNDLE_NO_TAR=1 leaves the unpacked folder OUTDIR/texbundle instead of the tarball (fast; for tests).
#
# Use (on the GPU machine; the tarball travels as a carried ignored path, e.g. carry [".carry/tex"]):
#     tar -xJf .carry/tex/tex.tar.xz -C /tmp && source /tmp/texbundle/activate.sh
#     which latex          # -> /tmp/texbundle/bin/latex
#     .venv/bin/python -c 'from texocr.data.render import get_renderer; print(get_renderer("tex").render_batch(["x^2"]))'
#   activate.sh only puts texbundle/bin first on PATH. bin/latex, bin/dvipng, bin/kpsewhich are small sh wrappers
#   that set TEXMFCNF (the bundle's own texmf.cnf, which names only the bundle's tree) and LD_LIBRARY_PATH (the
#   bundled .so files) for the TeX process only, then exec the real binaries in texbundle/libexec; so the
#   bundled libstdc++/libpng/... never leak into Python or torch. The bundle works from any directory.
#
# Inside: Debian bookworm binaries (glibc >= 2.34 needed, see MANIFEST), every non-glibc shared library they
# load, the LaTeX format latex.fmt built for exactly this pdftex, the LaTeX files texocr's preamble needs
# (base, amsmath, amsfonts, tools, l3backend, preview, euler, psnfss), and Type 1 fonts + a psfonts.map, so
# dvipng renders every glyph through FreeType: no METAFONT, no PK fonts, no font generation at run time.
set -euo pipefail

OUT=${1:?usage: tex_bundle.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/texbundle-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
B=$WORK/texbundle
mkdir -p "$B/bin" "$B/libexec" "$B/lib" "$B/texmf/web2c/pdftex" "$B/texmf/web2c/dist" \
         "$B/texmf/fonts/map/dvips/texbundle"

for t in pdftex dvipng kpsewhich; do
  command -v "$t" >/dev/null || { echo "tex_bundle: $t not found (need texlive-binaries, dvipng)" >&2; exit 1; }
done
FMT=$(kpsewhich -engine=pdftex -progname=latex latex.fmt)
DIST=$(kpsewhich --var-value TEXMFDIST)          # /usr/share/texlive/texmf-dist on Debian
CNF=$(kpsewhich -a texmf.cnf | grep texmf-dist | head -1)
[ -n "$FMT" ] && [ -n "$DIST" ] && [ -n "$CNF" ] || { echo "tex_bundle: no latex.fmt / TEXMFDIST / texmf.cnf" >&2; exit 1; }

# ---- trees to copy from: the system's, plus texlive-fonts-recommended's files when it is not installed ----
TREES=("$DIST" /usr/share/texmf)
if [ -z "$(kpsewhich zptmcm7t.tfm)" ]; then
  deb=${TFR_DEB:-}
  if [ -z "$deb" ]; then
    (cd "$WORK" && apt-get download texlive-fonts-recommended >/dev/null 2>&1) ||
      { echo "tex_bundle: texlive-fonts-recommended is not installed and apt-get download failed (set TFR_DEB)" >&2; exit 3; }
    deb=$(ls "$WORK"/texlive-fonts-recommended_*.deb)
  fi
  dpkg-deb -x "$deb" "$WORK/tfr"
  TREES+=("$WORK/tfr/usr/share/texlive/texmf-dist")
  TFR_FROM=$(basename "$deb")
else
  TFR_FROM="system texlive-fonts-recommended"
fi

# TDS directories shipped (whole directories, so that any font shape or .fd a formula may reach is there).
DIRS=(
  tex/latex/base tex/latex/amsmath tex/latex/amsfonts tex/latex/tools tex/latex/l3backend tex/latex/preview
  tex/latex/euler tex/latex/psnfss
  fonts/tfm/public/cm fonts/tfm/public/amsfonts fonts/tfm/public/latex-fonts fonts/tfm/public/mathpazo fonts/tfm/public/rsfs
  fonts/tfm/adobe/times fonts/tfm/adobe/palatino fonts/tfm/adobe/bookman fonts/tfm/adobe/symbol
  fonts/tfm/adobe/zapfchan fonts/tfm/adobe/courier fonts/tfm/adobe/avantgar
  fonts/vf/public/mathpazo fonts/vf/adobe/times fonts/vf/adobe/palatino fonts/vf/adobe/bookman
  fonts/vf/adobe/zapfchan fonts/vf/adobe/courier fonts/vf/adobe/avantgar
  fonts/type1/public/amsfonts/cm fonts/type1/public/amsfonts/cmextra fonts/type1/public/amsfonts/symbols
  fonts/type1/public/amsfonts/euler fonts/type1/public/amsfonts/latxfont fonts/type1/public/mathpazo fonts/type1/public/fpl fonts/type1/public/rsfs
  fonts/type1/urw/times fonts/type1/urw/palatino fonts/type1/urw/bookman fonts/type1/urw/symbol
  fonts/type1/urw/zapfchan fonts/type1/urw/courier fonts/type1/urw/avantgar
  fonts/enc/dvips/base
)
for d in "${DIRS[@]}"; do
  found=0
  for t in "${TREES[@]}"; do
    if [ -d "$t/$d" ]; then
      mkdir -p "$B/texmf/$d"
      cp -rL "$t/$d/." "$B/texmf/$d/"
      found=1
    fi
  done
  [ $found = 1 ] || { echo "tex_bundle: $d not found in ${TREES[*]}" >&2; exit 1; }
done
# drop what no TeX run reads (docs, metrics for other programs, sources)
find "$B/texmf" \( -name '*.afm' -o -name '*.pfm' -o -name '*.dtx' -o -name '*.ins' -o -name '*.pdf' \
  -o -name 'README*' -o -name '*.txt' \) -type f -delete
cp "$FMT" "$B/texmf/web2c/pdftex/latex.fmt"

# ---- psfonts.map: every map line (system psfonts.map + the shipped packages' .map files) whose .pfb we ship ----
maps=("$(kpsewhich psfonts.map)")
for t in "${TREES[@]}"; do
  for m in times/utm palatino/upl bookman/ubk symbol/usy zapfchan/uzc courier/ucr avantgar/uag rsfs/rsfs; do
    [ -f "$t/fonts/map/dvips/$m.map" ] && maps+=("$t/fonts/map/dvips/$m.map")
  done
done
find "$B/texmf/fonts/type1" "$B/texmf/fonts/enc" \( -name '*.pfb' -o -name '*.enc' \) -printf '%f\n' | sort -u >"$WORK/pfbs"
cat "${maps[@]}" | awk -v list="$WORK/pfbs" '
  BEGIN { while ((getline f < list) > 0) have[f] = 1 }
  /^[ \t]*[%#*;]/ || NF == 0 { next }
  { ok = 0; bad = 0
    for (i = 2; i <= NF; i++) if ($i ~ /\.(pfb|enc)$/) { f = $i; sub(/^<+\[?/, "", f); if (f in have) { if (f ~ /pfb$/) ok = 1 } else bad = 1 }
    if (ok && !bad && !seen[$1]++) print }' >"$B/texmf/fonts/map/dvips/texbundle/psfonts.map"

# ---- completeness: every font a shipped virtual font points to must be shipped (a .tfm, and a map line or a .vf) ----
find "$B/texmf/fonts/vf" -name '*.vf' | while read -r vf; do
  tfm=$(find "$B/texmf/fonts/tfm" -name "$(basename "$vf" .vf).tfm" | head -1)
  [ -n "$tfm" ] || { echo "tex_bundle: no tfm for $vf" >&2; exit 1; }
  vftovp "$vf" "$tfm" 2>/dev/null | grep -o '(FONTNAME [^)]*' | cut -d' ' -f2 || true
done | sort -u >"$WORK/vfrefs"
awk '{print $1}' "$B/texmf/fonts/map/dvips/texbundle/psfonts.map" | sort -u >"$WORK/mapped"
find "$B/texmf/fonts/vf" -name '*.vf' -printf '%f\n' | sed 's/\.vf$//' | sort -u >"$WORK/vfs"
find "$B/texmf/fonts/tfm" -name '*.tfm' -printf '%f\n' | sed 's/\.tfm$//' | sort -u >"$WORK/tfms"
missing=$(sort -u "$WORK/mapped" "$WORK/vfs" | comm -23 "$WORK/vfrefs" - | tr '\n' ' ')
nometric=$(comm -23 "$WORK/vfrefs" "$WORK/tfms" | tr '\n' ' ')
[ -z "$missing$nometric" ] || { echo "tex_bundle: virtual fonts point to unshipped fonts: no glyphs: $missing / no tfm: $nometric" >&2; exit 1; }
noglyphs=$(sort -u "$WORK/mapped" "$WORK/vfs" | comm -23 "$WORK/tfms" - | tr '\n' ' ')
echo "tfm files without glyphs (no map line, no vf; TeX can use them, dvipng would leave them blank): ${noglyphs:-none}"

# ---- texmf.cnf: the upstream one (memory sizes etc. as when latex.fmt was dumped) + overrides naming only us ----
cp "$CNF" "$B/texmf/web2c/dist/texmf.cnf"
cat >"$B/texmf/web2c/texmf.cnf" <<'EOF'
% texbundle: read before web2c/dist/texmf.cnf (earlier files win). $TEXBUNDLE is set by the bin/ wrappers.
TEXMFROOT = $TEXBUNDLE
TEXMFDIST = $TEXBUNDLE/texmf
TEXMFMAIN = $TEXMFDIST
TEXMFLOCAL = $TEXMFDIST
TEXMFSYSVAR = $TEXMFDIST
TEXMFSYSCONFIG = $TEXMFDIST
TEXMFVAR = $TEXMFDIST
TEXMFCONFIG = $TEXMFDIST
TEXMFHOME = $TEXMFDIST
TEXMFDEBIAN = $TEXMFDIST
TEXMF = !!$TEXMFDIST
TEXMFDBS = !!$TEXMFDIST
VARTEXFONTS = $TEXMFDIST/fonts/none
OSFONTDIR = $TEXMFDIST/fonts/none
TEXINPUTS.latex = .;$TEXMF/tex/{latex,generic,}//
TEXINPUTS = .;$TEXMF/tex/{latex,generic,}//
TEXFORMATS = .;$TEXMF/web2c{/$engine,}
TFMFONTS = .;$TEXMF/fonts/tfm//
VFFONTS = .;$TEXMF/fonts/vf//
T1FONTS = .;$TEXMF/fonts/type1//
ENCFONTS = .;$TEXMF/fonts/enc//
TEXFONTMAPS = .;$TEXMF/fonts/map/dvips//
PKFONTS = .;$TEXMF/fonts/pk//
MKTEXTEX = 0
MKTEXTFM = 0
MKTEXPK = 0
MKTEXMF = 0
MKTEXFMT = 0
shell_escape = f
openin_any = p
openout_any = p
EOF

# ---- binaries + every shared library they load that is not glibc ----
cp -L "$(command -v pdftex)" "$B/libexec/pdftex"
ln -s pdftex "$B/libexec/latex"             # pdftex picks the latex format from its argv[0]
cp -L "$(command -v dvipng)" "$B/libexec/dvipng"
cp -L "$(command -v kpsewhich)" "$B/libexec/kpsewhich"
GLIBC='^(linux-vdso|ld-linux|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl)\.so'
for x in "$B/libexec/pdftex" "$B/libexec/dvipng" "$B/libexec/kpsewhich"; do
  ldd "$x" | awk '/=>/ && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r name path; do
  [[ $name =~ $GLIBC ]] || cp -L "$path" "$B/lib/$name"
done

for t in latex pdftex dvipng kpsewhich; do
  cat >"$B/bin/$t" <<EOF
#!/bin/sh
# texbundle wrapper: the bundle's texmf.cnf and .so files, for this process only.
d=\$(dirname "\$0"); TEXBUNDLE=\$(cd "\$d/.." && pwd -P); export TEXBUNDLE
TEXMFCNF="\$TEXBUNDLE/texmf/web2c:\$TEXBUNDLE/texmf/web2c/dist"; export TEXMFCNF
unset TEXMF TEXMFHOME TEXMFVAR TEXMFCONFIG TEXMFLOCAL TEXMFSYSVAR TEXMFSYSCONFIG TEXMFDIST TEXMFMAIN \\
  TEXMFDBS TEXMFAUXTREES TEXINPUTS TFMFONTS VFFONTS T1FONTS ENCFONTS TEXFONTMAPS TEXFORMATS PKFONTS
LD_LIBRARY_PATH="\$TEXBUNDLE/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$TEXBUNDLE/libexec/$t" "\$@"
EOF
  chmod +x "$B/bin/$t"
done

cat >"$B/activate.sh" <<'EOF'
# source /tmp/texbundle/activate.sh  -- puts the bundle's latex/dvipng/kpsewhich first on PATH (bash, zsh, sh)
if [ -n "${BASH_SOURCE:-}" ]; then _tb=${BASH_SOURCE[0]}; elif [ -n "${ZSH_VERSION:-}" ]; then _tb=${(%):-%x}; else _tb=${TEXBUNDLE_ACTIVATE:-/tmp/texbundle/activate.sh}; fi
TEXBUNDLE=$(cd "$(dirname "$_tb")" && pwd -P); export TEXBUNDLE
case ":$PATH:" in *":$TEXBUNDLE/bin:"*) ;; *) PATH="$TEXBUNDLE/bin:$PATH"; export PATH ;; esac
unset _tb
EOF

# ---- ls-R (kpathsea's file database) ----
(cd "$B/texmf" && {
  echo '% ls-R -- filename database for kpathsea; do not change this line.'
  find . -type d | LC_ALL=C sort | while read -r dir; do
    [ "$dir" = . ] && printf '\n./:\n' || printf '\n%s:\n' "$dir"; (cd "$dir" && LC_ALL=C ls -A)
  done
} >"$B/texmf/ls-R.tmp" && mv "$B/texmf/ls-R.tmp" "$B/texmf/ls-R")

# ---- MANIFEST: provenance + the newest glibc symbol version any shipped ELF file needs ----
{
  echo "texbundle built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release && echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "pdftex: $(pdftex --version | head -1)"
  echo "dvipng: $(dvipng --version | head -1)"
  for p in texlive-binaries texlive-base texlive-latex-base texlive-latex-recommended preview-latex-style dvipng; do
    dpkg-query -W -f='deb: ${Package} ${Version}\n' "$p" 2>/dev/null || true
  done
  echo "psnfss fonts from: $TFR_FROM"
  need=$(for f in "$B"/libexec/* "$B"/lib/*; do [ -L "$f" ] || objdump -T "$f"; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  echo "newest glibc symbol version needed: $need"
  echo "libs: $(cd "$B/lib" && ls | tr '\n' ' ')"
} >"$B/MANIFEST"

cat "$B/MANIFEST"
echo "unpacked: $(du -sh "$B" | cut -f1)  texmf: $(du -sh "$B/texmf" | cut -f1)  lib: $(du -sh "$B/lib" | cut -f1)"
if [ "${TEXBUNDLE_NO_TAR:-0}" = 1 ]; then     # tests: the unpacked folder only, no (slow) xz
  rm -rf "$OUT/texbundle" && mv "$B" "$OUT/texbundle"
  echo "folder: $OUT/texbundle"
  exit 0
fi
tar -C "$WORK" -cf - texbundle | xz -9e -T0 >"$OUT/tex.tar.xz.tmp"
mv "$OUT/tex.tar.xz.tmp" "$OUT/tex.tar.xz"
cp "$B/activate.sh" "$OUT/activate.sh"
echo "tarball: $OUT/tex.tar.xz $(du -h "$OUT/tex.tar.xz" | cut -f1) ($(stat -c %s "$OUT/tex.tar.xz") bytes)"
