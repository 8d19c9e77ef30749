package chain_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The state machine must compute the same state on every validator. These
// constructs are where Go code most often does not, so the keepers may not
// use them without a reviewed reason (docs/chain.md, Determinism):
//
//   - a range over a map (or over maps.All/Keys/Values not fed to
//     slices.Sorted): its order changes from run to run;
//   - time.Now, time.Since, time.Until: each validator's own clock; state
//     logic reads the block time;
//   - float32/float64: rounding may differ across platforms and compilers;
//   - math/rand, math/rand/v2, crypto/rand: randomness not derived from
//     chain state;
//   - a go statement: goroutines interleave differently on every node.
//
// A line may still use one if it, or the line above, carries
// "// deterministic: <why>".
const determinismMarker = "deterministic:"

// stateLogic are the packages that run inside the state machine: every
// module, the FSM, and the app (its ABCI hooks, genesis and upgrades).
// chain/cmd and chain/node are the CLI and the in-process node around it.
var stateLogic = []string{"./x/...", "./fsm/...", "./chain"}

func TestDeterminismOfStateLogic(t *testing.T) {
	t.Parallel()
	pkgs, lookup := listPackages(t, "..", stateLogic...)
	var findings []string
	checked := 0
	for _, p := range pkgs {
		if p.Module == nil || p.Module.Path != "github.com/devshard/devshard" {
			continue
		}
		if !isStateLogic(p.ImportPath) {
			continue
		}
		fset := token.NewFileSet()
		var files []*ast.File
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, parser.ParseComments|parser.SkipObjectResolution)
			require.NoError(t, err)
			files = append(files, f)
		}
		if len(files) == 0 {
			continue
		}
		got, err := checkDeterminism(fset, p.ImportPath, files, importer.ForCompiler(fset, "gc", lookup))
		require.NoError(t, err, p.ImportPath)
		findings = append(findings, got...)
		checked++
	}
	require.Greater(t, checked, 5, "the packages of the state machine were not found")
	require.Empty(t, findings, "non-deterministic constructs in state logic; fix them, or mark a reviewed line with // %s <why>:\n%s",
		determinismMarker, strings.Join(findings, "\n"))
}

// TestDeterminismCheckerReports shows that the checker fails on each
// construct it forbids, and passes the deterministic forms and marked lines.
func TestDeterminismCheckerReports(t *testing.T) {
	t.Parallel()
	const src = `package p

import (
	"maps"
	"math/rand"
	mrand "math/rand/v2"
	crand "crypto/rand"
	"slices"
	"time"
)

var _, _ = mrand.IntN, crand.Reader

func bad(m map[string]int) (out []string) {
	for k := range m { // MAP
		out = append(out, k)
	}
	for k := range maps.Keys(m) { // MAPITER
		out = append(out, k)
	}
	_ = slices.Collect(maps.Values(m)) // MAPITER
	_ = time.Now() // CLOCK
	_ = time.Since(time.Time{}) // CLOCK
	_ = time.Until(time.Time{}) // CLOCK
	var f float64 // FLOAT
	_ = f // FLOAT
	_ = float32(len(m)) / 2 // FLOAT
	_ = rand.Int() // the import is what is reported
	go func() {}() // GO
	return out
}

func good(m map[string]int, s []int) (out []string) {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k)
	}
	for range s {
	}
	// deterministic: a lookup whose order cannot matter
	for k := range m {
		_ = k
	}
	for k := range m { // deterministic: same, on the line itself
		_ = k
	}
	_ = time.Unix(0, 0)
	const half = 1e6 / 2
	return out
}
`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, parser.ParseComments)
	require.NoError(t, err)
	findings, err := checkDeterminism(fset, "p", []*ast.File{f}, importer.Default())
	require.NoError(t, err)

	var want []string
	for i, line := range strings.Split(src, "\n") {
		if _, tag, ok := strings.Cut(line, "// "); ok && strings.ToUpper(tag) == tag {
			want = append(want, fmt.Sprintf("p.go:%d", i+1))
		}
	}
	want = append(want, "p.go:5", "p.go:6", "p.go:7") // the three rand imports
	var got []string
	for _, f := range findings {
		pos, _, _ := strings.Cut(f, ": ")
		got = append(got, pos)
	}
	slices.Sort(want)
	slices.Sort(got)
	require.Equal(t, want, slices.Compact(got), "every forbidden construct is reported, and nothing else:\n%s", strings.Join(findings, "\n"))
}

func isStateLogic(importPath string) bool {
	const mod = "github.com/devshard/devshard"
	return importPath == mod+"/chain" || importPath == mod+"/fsm" ||
		strings.HasPrefix(importPath, mod+"/fsm/") || strings.HasPrefix(importPath, mod+"/x/")
}

// checkDeterminism type-checks files (one package) and returns a finding,
// "file:line: what", for every forbidden construct not marked as reviewed.
// Generated files are type-checked but not inspected.
func checkDeterminism(fset *token.FileSet, path string, files []*ast.File, imp types.Importer) ([]string, error) {
	info := &types.Info{
		Types: map[ast.Expr]types.TypeAndValue{},
		Defs:  map[*ast.Ident]types.Object{},
		Uses:  map[*ast.Ident]types.Object{},
	}
	if _, err := (&types.Config{Importer: imp}).Check(path, fset, files, info); err != nil {
		return nil, fmt.Errorf("type-checking %s: %w", path, err)
	}

	marked := map[string]bool{} // "file:line" carrying the marker
	for _, f := range files {
		for _, g := range f.Comments {
			for _, c := range g.List {
				text := strings.TrimSpace(strings.TrimPrefix(c.Text, "//"))
				if why, ok := strings.CutPrefix(text, determinismMarker); ok && strings.TrimSpace(why) != "" {
					p := fset.Position(c.Slash)
					marked[fmt.Sprintf("%s:%d", p.Filename, p.Line)] = true
				}
			}
		}
	}
	var findings []string
	seen := map[string]bool{} // one finding per line and kind
	report := func(at token.Pos, what string) {
		p := fset.Position(at)
		line, above := fmt.Sprintf("%s:%d", p.Filename, p.Line), fmt.Sprintf("%s:%d", p.Filename, p.Line-1)
		if marked[line] || marked[above] || seen[line+what] {
			return
		}
		seen[line+what] = true
		findings = append(findings, line+": "+what)
	}
	isFloat := func(t types.Type) bool {
		b, ok := t.Underlying().(*types.Basic)
		return ok && b.Info()&(types.IsFloat|types.IsComplex) != 0
	}
	pkgFunc := func(e ast.Expr) (pkg, name string) {
		sel, ok := ast.Unparen(e).(*ast.SelectorExpr)
		if !ok {
			return "", ""
		}
		fn, ok := info.Uses[sel.Sel].(*types.Func)
		if !ok || fn.Pkg() == nil {
			return "", ""
		}
		return fn.Pkg().Path(), fn.Name()
	}

	for _, f := range files {
		if ast.IsGenerated(f) {
			continue // protoc's output: gogoproto sorts map keys, and the protos have no floats
		}
		sortedArgs := map[ast.Expr]bool{} // maps.Keys(m) inside slices.Sorted(...)
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ImportSpec:
				switch p := strings.Trim(n.Path.Value, `"`); p {
				case "math/rand", "math/rand/v2", "crypto/rand":
					report(n.Pos(), "import of "+p+": randomness not derived from chain state")
				}
			case *ast.GoStmt:
				report(n.Pos(), "go statement: goroutines in state logic")
			case *ast.RangeStmt:
				if tv, ok := info.Types[n.X]; ok {
					if _, isMap := tv.Type.Underlying().(*types.Map); isMap {
						report(n.Pos(), "range over a map: its order differs between runs")
					}
				}
			case *ast.CallExpr:
				switch pkg, name := pkgFunc(n.Fun); {
				case pkg == "slices" && strings.HasPrefix(name, "Sorted") && len(n.Args) > 0:
					sortedArgs[ast.Unparen(n.Args[0])] = true
				case pkg == "maps" && (name == "All" || name == "Keys" || name == "Values") && !sortedArgs[n]:
					report(n.Pos(), "maps."+name+" not fed to slices.Sorted: map order differs between runs")
				}
			case *ast.SelectorExpr:
				if fn, ok := info.Uses[n.Sel].(*types.Func); ok && fn.Pkg() != nil && fn.Pkg().Path() == "time" {
					switch fn.Name() {
					case "Now", "Since", "Until":
						report(n.Pos(), "time."+fn.Name()+": this node's clock; use the block time")
					}
				}
			case *ast.Ident:
				if obj, ok := info.Defs[n]; ok && obj != nil {
					if v, isVar := obj.(*types.Var); isVar && isFloat(v.Type()) {
						report(n.Pos(), "float variable "+n.Name+": use integer math")
					}
				}
				if tn, ok := info.Uses[n].(*types.TypeName); ok && isFloat(tn.Type()) {
					report(n.Pos(), "float type "+n.Name+": use integer math")
				}
			}
			if e, ok := n.(ast.Expr); ok {
				if tv, ok := info.Types[e]; ok && tv.Value == nil && tv.Type != nil && isFloat(tv.Type) {
					report(e.Pos(), "float arithmetic: use integer math")
				}
			}
			return true
		})
	}
	return findings, nil
}

// listedPackage is what go list tells of a package.
type listedPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Export     string
	Module     *struct{ Path string }
}

// listPackages lists patterns and their dependencies from dir, with export
// data (built or taken from the build cache), and returns an importer
// lookup that reads it. No dependency beyond the standard library is needed.
func listPackages(t *testing.T, dir string, patterns ...string) ([]listedPackage, func(string) (io.ReadCloser, error)) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps", "-export", "-json=ImportPath,Dir,GoFiles,Export,Module"}, patterns...)...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list: %s", stderr.String())
	var pkgs []listedPackage
	export := map[string]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else {
			require.NoError(t, err)
		}
		pkgs = append(pkgs, p)
		export[p.ImportPath] = p.Export
	}
	return pkgs, func(path string) (io.ReadCloser, error) {
		file, ok := export[path]
		if !ok || file == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(file)
	}
}
