// Package settings is how every devshard daemon takes its configuration.
// A daemon declares each setting once, bound to the field it fills; from
// that declaration come its flag, its environment variable, its key in the
// daemon's TOML file and its row in the docs. Values are layered in rising
// precedence: the declared default, the file, the environment, the flags.
//
// One naming rule holds for every daemon. A setting's key is its dotted
// place in the file (storage.keep_epochs: keep_epochs in [storage]); its
// flag is the key with dots and underscores as dashes
// (--storage-keep-epochs); its variable is DEVSHARD_<DAEMON>_ and the key
// in upper case with dots and dashes as underscores
// (DEVSHARD_HOST_STORAGE_KEEP_EPOCHS).
package settings

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/spf13/pflag"
)

// Kind is the type of a setting's value.
type Kind int

const (
	String Kind = iota
	Int
	Uint
	Duration
	Bool
	List // of strings; comma-separated in flags and variables
)

func (k Kind) String() string {
	return [...]string{"string", "int", "uint", "duration", "bool", "list"}[k]
}

// want is what a value of the kind looks like, for error messages.
func (k Kind) want() string {
	return [...]string{
		"text",
		"a whole number",
		"a whole number, 0 or more",
		"a duration such as 30s or 20ms",
		"true or false",
		"a list of text (comma-separated, or a TOML array in the file)",
	}[k]
}

// Source is the layer a setting's value came from.
type Source int

const (
	Default Source = iota
	File
	Env
	Flag
)

func (s Source) String() string {
	return [...]string{"default", "file", "environment", "flag"}[s]
}

// ValueError is a value that is not of its setting's kind. It names the
// setting, where the value came from and what was expected.
type ValueError struct {
	Key  string
	From string // the file's path, or the variable's name
	Want string
	Got  string
}

func (e *ValueError) Error() string {
	return fmt.Sprintf("%s from %s: expected %s, got %s", e.Key, e.From, e.Want, e.Got)
}

// Setting is one declared value of a daemon.
type Setting struct {
	Key  string
	Kind Kind
	Help string

	def      any
	set      func(any)
	daemon   string
	envOnly  bool
	oldFlags []string
	oldEnv   []string
	oldKeys  []string
}

var (
	flagNamer = strings.NewReplacer(".", "-", "_", "-")
	envNamer  = strings.NewReplacer(".", "_", "-", "_")
)

// Flag is the setting's flag name, without the leading dashes; empty for
// a setting taken from the environment only.
func (st *Setting) Flag() string {
	if st.envOnly {
		return ""
	}
	return flagNamer.Replace(st.Key)
}

// Env is the setting's environment variable.
func (st *Setting) Env() string {
	return "DEVSHARD_" + strings.ToUpper(st.daemon) + "_" + strings.ToUpper(envNamer.Replace(st.Key))
}

// Default is the declared default, as a flag or a variable would give it.
func (st *Setting) Default() string { return format(st.def) }

// EnvOnly takes the setting from the environment alone: a secret such as
// an API key must not sit in a process's arguments, which every user of the
// machine sees, nor in a file that is copied around. It has no flag, and
// the file may not name it.
func (st *Setting) EnvOnly() *Setting {
	st.envOnly = true
	return st
}

// FormerFlag keeps an older flag name working, hidden, with a one-line
// deprecation notice, so that scripts written against it do not break.
func (st *Setting) FormerFlag(name string) *Setting {
	st.oldFlags = append(st.oldFlags, name)
	return st
}

// FormerEnv keeps an older variable name working, with a one-line
// deprecation notice; the current name wins when both are set.
func (st *Setting) FormerEnv(name string) *Setting {
	st.oldEnv = append(st.oldEnv, name)
	return st
}

// FormerKey keeps an older file key working, with a one-line deprecation
// notice; the current key wins when the file has both.
func (st *Setting) FormerKey(key string) *Setting {
	st.oldKeys = append(st.oldKeys, key)
	return st
}

// Schema is one daemon's declared settings, bound to the fields they fill.
type Schema struct {
	daemon string
	list   []*Setting
	byKey  map[string]*Setting
	source map[*Setting]Source
	flags  map[*Setting]*flagValue
	config string // --config
}

// New starts the schema of the daemon named, in lower case, as in its
// variables' prefix (DEVSHARD_HOST_ for "host").
func New(daemon string) *Schema {
	return &Schema{daemon: daemon, byKey: map[string]*Setting{}, source: map[*Setting]Source{}, flags: map[*Setting]*flagValue{}}
}

// String declares a text setting, writing def to *p at once.
func (s *Schema) String(p *string, key, def, help string) *Setting {
	return s.add(key, String, help, def, func(v any) { *p = v.(string) })
}

// Int declares a whole-number setting.
func (s *Schema) Int(p *int, key string, def int, help string) *Setting {
	return s.add(key, Int, help, def, func(v any) { *p = v.(int) })
}

// Uint declares a setting that is a whole number, 0 or more.
func (s *Schema) Uint(p *uint64, key string, def uint64, help string) *Setting {
	return s.add(key, Uint, help, def, func(v any) { *p = v.(uint64) })
}

// Duration declares a duration setting ("30s" in files, flags and
// variables alike).
func (s *Schema) Duration(p *time.Duration, key string, def time.Duration, help string) *Setting {
	return s.add(key, Duration, help, def, func(v any) { *p = v.(time.Duration) })
}

// Bool declares a switch; the flag alone means true.
func (s *Schema) Bool(p *bool, key string, def bool, help string) *Setting {
	return s.add(key, Bool, help, def, func(v any) { *p = v.(bool) })
}

// List declares a list of strings.
func (s *Schema) List(p *[]string, key string, def []string, help string) *Setting {
	return s.add(key, List, help, def, func(v any) { *p = append([]string(nil), v.([]string)...) })
}

func (s *Schema) add(key string, kind Kind, help string, def any, set func(any)) *Setting {
	if _, dup := s.byKey[key]; dup {
		panic(fmt.Sprintf("settings: %s declares %q twice", s.daemon, key))
	}
	st := &Setting{Key: key, Kind: kind, Help: help, def: def, set: set, daemon: s.daemon}
	for _, other := range s.list {
		if other.Env() == st.Env() {
			panic(fmt.Sprintf("settings: %q and %q of %s would share %s", other.Key, key, s.daemon, st.Env()))
		}
	}
	set(def)
	s.list = append(s.list, st)
	s.byKey[key] = st
	return st
}

// Settings lists the settings in the order they were declared, which is
// the order --help and the docs show them.
func (s *Schema) Settings() []*Setting { return s.list }

// Lookup finds a setting by its key.
func (s *Schema) Lookup(key string) (*Setting, bool) {
	st, ok := s.byKey[key]
	return st, ok
}

// Source is where the setting's current value came from.
func (s *Schema) Source(key string) Source { return s.source[s.byKey[key]] }

// AddFlags registers a typed flag for every setting, the former names as
// hidden deprecated aliases, and --config. Flags take effect in Load, after
// the file and the environment, whatever order they were parsed in. Help
// lists them in the order they were declared, the docs' order.
func (s *Schema) AddFlags(fs *pflag.FlagSet) {
	fs.SortFlags = false
	fs.StringVar(&s.config, "config", "", fmt.Sprintf("TOML file of these settings (default: <home>/%s.toml when it exists)", s.daemon))
	for _, st := range s.list {
		if st.envOnly {
			continue
		}
		v := &flagValue{st: st}
		s.flags[st] = v
		f := fs.VarPF(v, st.Flag(), "", st.Help+" (env "+st.Env()+")")
		f.DefValue = st.Default()
		if st.Kind == Bool {
			f.NoOptDefVal = "true"
		}
		for _, old := range st.oldFlags {
			alias := fs.VarPF(v, old, "", "")
			alias.NoOptDefVal = f.NoOptDefVal
			_ = fs.MarkDeprecated(old, "use --"+st.Flag())
		}
	}
}

// File is the configuration file to read: the one --config names, else
// <home>/<daemon>.toml when it exists, home being the "home" setting as
// the flags, the environment or its default give it. It is "" when there
// is none.
func (s *Schema) File(env func(string) (string, bool)) string {
	if s.config != "" {
		return s.config
	}
	st, ok := s.byKey["home"]
	if !ok {
		return ""
	}
	home, _ := st.def.(string)
	if v, ok := env(st.Env()); ok {
		home = v
	}
	if f := s.flags[st]; f != nil && f.set {
		home = f.val.(string)
	}
	path := filepath.Join(ExpandHome(home), s.daemon+".toml")
	if _, err := os.Stat(path); err != nil {
		return ""
	}
	return path
}

// Load layers the file at path (none when empty), the environment and the
// flags AddFlags registered over the declared defaults. Deprecation notices
// for former variable names go to warn.
func (s *Schema) Load(path string, env func(string) (string, bool), warn io.Writer) error {
	if path != "" {
		if err := s.loadFile(path, warn); err != nil {
			return err
		}
	}
	if err := s.loadEnv(env, warn); err != nil {
		return err
	}
	for _, st := range s.list {
		if f := s.flags[st]; f != nil && f.set {
			st.set(f.val)
			s.source[st] = Flag
		}
	}
	return nil
}

func (s *Schema) loadFile(path string, warn io.Writer) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var tree map[string]any
	if err := toml.Unmarshal(raw, &tree); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	values := map[string]any{}
	flatten("", tree, s.byKey, values)
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	former := map[string]*Setting{}
	for _, st := range s.list {
		for _, old := range st.oldKeys {
			former[old] = st
		}
	}
	var unknown []string
	for _, k := range keys {
		st, ok := s.byKey[k]
		if !ok {
			if st, ok = former[k]; ok {
				fmt.Fprintf(warn, "Config %s: key %s has been deprecated, use %s\n", path, k, st.Key)
			}
		}
		switch {
		case !ok:
			unknown = append(unknown, k)
		case st.envOnly:
			return fmt.Errorf("config %s: %s is taken from the environment only (%s), never from a file", path, k, st.Env())
		}
	}
	if len(unknown) > 0 {
		return fmt.Errorf("config %s has unknown settings: %s", path, strings.Join(unknown, ", "))
	}
	// Former keys first, so that a current key in the same file wins.
	sort.SliceStable(keys, func(i, j int) bool { return former[keys[i]] != nil && former[keys[j]] == nil })
	for _, k := range keys {
		st, ok := s.byKey[k]
		if !ok {
			st = former[k]
		}
		v, err := fromTOML(st.Kind, values[k])
		if err != nil {
			return &ValueError{Key: k, From: path, Want: st.Kind.want(), Got: fmt.Sprintf("%#v", values[k])}
		}
		st.set(v)
		s.source[st] = File
	}
	return nil
}

// flatten gathers the file's values by dotted key. A table is descended
// into unless a setting has its key, so that the setting's kind check, not
// the unknown-key check, reports it.
func flatten(prefix string, tree map[string]any, known map[string]*Setting, out map[string]any) {
	for k, v := range tree {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if sub, ok := v.(map[string]any); ok {
			if _, leaf := known[key]; !leaf {
				flatten(key, sub, known, out)
				continue
			}
		}
		out[key] = v
	}
}

func (s *Schema) loadEnv(env func(string) (string, bool), warn io.Writer) error {
	for _, st := range s.list {
		name := st.Env()
		text, ok := env(name)
		for _, old := range st.oldEnv {
			if ok {
				break
			}
			if text, ok = env(old); ok {
				fmt.Fprintf(warn, "Environment variable %s has been deprecated, use %s\n", old, name)
				name = old
			}
		}
		if !ok {
			continue
		}
		v, err := parse(st.Kind, text)
		if err != nil {
			return &ValueError{Key: st.Key, From: name, Want: st.Kind.want(), Got: strconv.Quote(text)}
		}
		st.set(v)
		s.source[st] = Env
	}
	return nil
}

// flagValue holds a flag's parsed value until Load applies it last.
type flagValue struct {
	st  *Setting
	val any
	set bool
}

func (f *flagValue) Set(text string) error {
	v, err := parse(f.st.Kind, text)
	if err != nil {
		return err
	}
	if f.st.Kind == List && f.set { // a repeated list flag adds to it
		v = append(f.val.([]string), v.([]string)...)
	}
	f.val, f.set = v, true
	return nil
}

func (f *flagValue) String() string {
	if f.set {
		return format(f.val)
	}
	return f.st.Default()
}

func (f *flagValue) Type() string { return f.st.Kind.String() }

var errKind = errors.New("wrong kind")

// parse reads a value as flags and variables give it.
func parse(kind Kind, text string) (any, error) {
	var v any
	var err error
	switch kind {
	case String:
		v = text
	case Int:
		v, err = strconv.Atoi(text)
	case Uint:
		v, err = strconv.ParseUint(text, 10, 64)
	case Duration:
		v, err = time.ParseDuration(text)
	case Bool:
		v, err = strconv.ParseBool(text)
	case List:
		var out []string
		for _, s := range strings.Split(text, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		v = out
	}
	if err != nil {
		return nil, fmt.Errorf("expected %s", kind.want())
	}
	return v, nil
}

// fromTOML reads a value as the TOML decoder gives it: numbers as int64,
// durations as strings, lists as arrays.
func fromTOML(kind Kind, raw any) (any, error) {
	switch kind {
	case String:
		if s, ok := raw.(string); ok {
			return s, nil
		}
	case Int:
		if n, ok := raw.(int64); ok && int64(int(n)) == n {
			return int(n), nil
		}
	case Uint:
		if n, ok := raw.(int64); ok && n >= 0 {
			return uint64(n), nil
		}
	case Duration:
		if s, ok := raw.(string); ok {
			return time.ParseDuration(s)
		}
	case Bool:
		if b, ok := raw.(bool); ok {
			return b, nil
		}
	case List:
		items, ok := raw.([]any)
		if !ok {
			break
		}
		out := make([]string, 0, len(items))
		for _, it := range items {
			s, ok := it.(string)
			if !ok {
				return nil, errKind
			}
			out = append(out, s)
		}
		return out, nil
	}
	return nil, errKind
}

func format(v any) string {
	switch v := v.(type) {
	case []string:
		return strings.Join(v, ",")
	default:
		return fmt.Sprint(v)
	}
}

// Table is the markdown table of the settings that the daemon's page in
// docs/ shows; a test beside each daemon checks the page against it.
func (s *Schema) Table() string {
	var b strings.Builder
	b.WriteString("| key | flag | environment | type | default | meaning |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	cell := strings.NewReplacer("|", `\|`)
	for _, st := range s.list {
		key, flag := "`"+st.Key+"`", "`--"+st.Flag()+"`"
		if st.envOnly {
			key, flag = "none", "none"
		}
		def := "none"
		if d := st.Default(); d != "" {
			def = "`" + d + "`"
		}
		fmt.Fprintf(&b, "| %s | %s | `%s` | %s | %s | %s |\n", key, flag, st.Env(), st.Kind, def, cell.Replace(st.Help))
	}
	return b.String()
}

// ExpandHome replaces a leading ~ with the user's home directory.
func ExpandHome(p string) string {
	if rest, ok := strings.CutPrefix(p, "~"); ok {
		if h, err := os.UserHomeDir(); err == nil {
			return filepath.Join(h, rest)
		}
	}
	return p
}
