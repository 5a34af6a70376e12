// Package config loads the one YAML file that drives every lockstep
// subcommand. Loading is strict: unknown keys, durations without a unit,
// unset ${VARS} and missing fields are errors that name the file, the line
// and the key path, because a typo in an HA config must never be silently
// ignored.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/lockstep-ha/lockstep/dbrepl"
	"github.com/lockstep-ha/lockstep/lsync"
	"github.com/lockstep-ha/lockstep/orchestrator"
)

// File is the whole configuration file. Sections are optional so that one
// file can drive `sync`, `repl` and `run` alike; each command checks that
// the section it needs is present.
type File struct {
	Node    string                      `yaml:"node"`
	Listen  string                      `yaml:"listen"`
	Sync    []lsync.JobConfig           `yaml:"sync"`
	Repl    *dbrepl.Config              `yaml:"repl"`
	Cluster *orchestrator.ClusterConfig `yaml:"cluster"`

	// Path is where the file was read from (for messages and reloads).
	Path string `yaml:"-"`
}

// Error is a configuration problem. Problems lists every finding, each
// already prefixed with its location, so an admin fixes them in one go.
type Error struct {
	Path     string
	Problems []string
}

func (e *Error) Error() string {
	if len(e.Problems) == 1 {
		return fmt.Sprintf("%s: %s", e.Path, e.Problems[0])
	}
	return fmt.Sprintf("%s: %d problems:\n  %s", e.Path, len(e.Problems), strings.Join(e.Problems, "\n  "))
}

// Load reads, expands, decodes, defaults and validates path.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Path: path, Problems: []string{fmt.Sprintf("cannot read config: %v", errors.Unwrap(err))}}
	}
	return Parse(path, data, os.LookupEnv)
}

// Parse is Load on bytes; lookup resolves ${VAR} references.
func Parse(path string, data []byte, lookup func(string) (string, bool)) (*File, error) {
	cerr := &Error{Path: path}
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		cerr.Problems = append(cerr.Problems, fmt.Sprintf("not valid YAML: %v", trimYAMLPrefix(err)))
		return nil, cerr
	}
	if len(root.Content) == 0 {
		cerr.Problems = append(cerr.Problems, "the file is empty")
		return nil, cerr
	}
	doc := root.Content[0]
	w := walker{lookup: lookup}
	w.walk(doc, reflect.TypeOf(File{}), "")
	if len(w.problems) > 0 {
		cerr.Problems = w.problems
		return nil, cerr
	}
	var f File
	if err := doc.Decode(&f); err != nil {
		cerr.Problems = append(cerr.Problems, trimYAMLPrefix(err))
		return nil, cerr
	}
	f.Path = path
	f.SetDefaults()
	for _, p := range f.validate() {
		cerr.Problems = append(cerr.Problems, p+lineHint(doc, p))
	}
	if len(cerr.Problems) > 0 {
		return nil, cerr
	}
	return &f, nil
}

// DefaultStateDir is where the sync jobs keep their sync state (the
// replication supervisor its fence records, and `lockstep run` its
// resource failures) unless `state_dir` says otherwise.
const DefaultStateDir = orchestrator.DefaultStateDir

// SetDefaults fills in every unset field of every present section.
func (f *File) SetDefaults() {
	if f.Listen == "" {
		f.Listen = orchestrator.DefaultListen
	}
	for i := range f.Sync {
		f.Sync[i].SetDefaults()
		if f.Sync[i].StateDir == "" {
			f.Sync[i].StateDir = DefaultStateDir
		}
	}
	if f.Repl != nil {
		f.Repl.SetDefaults()
	}
	if f.Cluster != nil {
		f.Cluster.SetDefaults()
		if f.Cluster.StateDir == "" {
			f.Cluster.StateDir = DefaultStateDir
		}
	}
}

// validate returns problems as "key.path: message".
func (f *File) validate() []string {
	var out []string
	add := func(prefix string, err error) {
		if err == nil {
			return
		}
		for _, line := range strings.Split(err.Error(), "\n") {
			out = append(out, prefix+line)
		}
	}
	if f.Node == "" {
		out = append(out, "node: required (this node's name)")
	}
	if len(f.Sync) == 0 && f.Repl == nil && f.Cluster == nil {
		out = append(out, "nothing to do: add a sync, repl or cluster section")
	}
	names := map[string]bool{}
	for i := range f.Sync {
		add(fmt.Sprintf("sync[%d].", i), f.Sync[i].Validate())
		if n := f.Sync[i].Name; n != "" && names[n] {
			out = append(out, fmt.Sprintf("sync[%d].name: duplicate job %q", i, n))
		}
		names[f.Sync[i].Name] = true
	}
	for i, j := range f.Sync {
		for k, t := range j.Targets {
			if t.IsLocal() {
				continue
			}
			prefix := fmt.Sprintf("sync[%d].targets[%d].", i, k)
			out = append(out, readable(prefix+"identity", t.Identity)...)
			out = append(out, readable(prefix+"known_hosts", t.KnownHosts)...)
		}
	}
	if f.Repl != nil {
		add("repl.", f.Repl.Validate())
	}
	if f.Cluster != nil {
		add("cluster.", f.Cluster.Validate())
		out = append(out, readable("cluster.key_file", f.Cluster.KeyFile)...)
		found := false
		for _, n := range f.Cluster.Nodes {
			found = found || n.Name == f.Node
		}
		if f.Node != "" && !found {
			out = append(out, fmt.Sprintf("cluster.nodes: this node %q is not listed", f.Node))
		}
		if f.Repl != nil {
			for i, n := range f.Cluster.Nodes {
				if n.DB == "" {
					continue
				}
				ok := false
				for _, d := range f.Repl.Nodes {
					ok = ok || d.Name == n.DB
				}
				if !ok {
					out = append(out, fmt.Sprintf("cluster.nodes[%d].db: %q is not a repl.nodes name", i, n.DB))
				}
			}
		}
	}
	return out
}

// readable reports a key file that cannot be opened, so that a daemon
// never starts only to fail on first use.
func readable(key, path string) []string {
	if path == "" {
		return nil
	}
	fh, err := os.Open(path)
	if err != nil {
		return []string{fmt.Sprintf("%s: cannot read %s: %v", key, path, errors.Unwrap(err))}
	}
	fh.Close()
	return nil
}

var durationType = reflect.TypeOf(time.Duration(0))

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// walker checks the YAML tree against the Go types before decoding, which
// lets it report unknown keys and bad durations with their full key path
// and line (yaml's own errors give neither), and expands ${VAR} in scalar
// values only — never in keys or comments.
type walker struct {
	lookup   func(string) (string, bool)
	problems []string
}

func (w *walker) fail(n *yaml.Node, path, format string, args ...any) {
	loc := fmt.Sprintf("line %d: ", n.Line)
	if path != "" {
		loc += path + ": "
	}
	w.problems = append(w.problems, loc+fmt.Sprintf(format, args...))
}

func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return
	}
	switch {
	case t == durationType:
		w.scalar(n, path)
		if n.Kind != yaml.ScalarNode {
			return
		}
		if _, err := time.ParseDuration(n.Value); err != nil {
			w.fail(n, path, "%q is not a duration (use a unit, e.g. 250ms, 5s, 10m)", n.Value)
		}
	case t.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.fail(n, path, "expected a mapping of keys, got %s", kindName(n))
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			sub := joinPath(path, k.Value)
			ft, ok := fields[k.Value]
			if !ok {
				w.fail(k, sub, "unknown key (known: %s)", knownKeys(fields))
				continue
			}
			if seen[k.Value] {
				w.fail(k, sub, "key given twice")
			}
			seen[k.Value] = true
			w.walk(v, ft, sub)
		}
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			w.fail(n, path, "expected a list, got %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			w.walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
		}
	default:
		w.scalar(n, path)
	}
}

// scalar checks that n is a scalar and expands environment references.
func (w *walker) scalar(n *yaml.Node, path string) {
	if n.Kind != yaml.ScalarNode {
		w.fail(n, path, "expected a single value, got %s", kindName(n))
		return
	}
	if !strings.Contains(n.Value, "${") {
		return
	}
	n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
		name := envRef.FindStringSubmatch(ref)[1]
		v, ok := w.lookup(name)
		if !ok {
			w.fail(n, path, "environment variable %s is not set", name)
		}
		return v
	})
	// A value that came from the environment is a string even if it looks
	// like a number; the Go type decides.
	if n.Style == 0 {
		n.Tag = ""
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

func knownKeys(fields map[string]reflect.Type) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return fmt.Sprintf("%q", n.Value)
	}
}

func trimYAMLPrefix(err error) string {
	return strings.TrimPrefix(strings.TrimPrefix(err.Error(), "yaml: "), "unmarshal errors:\n  ")
}

// lineHint finds the line of the key a validation problem names
// ("sync[0].targets[1].port: ..."), so that every message points into the
// file.
func lineHint(doc *yaml.Node, problem string) string {
	key, _, ok := strings.Cut(problem, ": ")
	if !ok {
		return ""
	}
	n := doc
	line := 0
	for _, part := range splitKeyPath(key) {
		switch {
		case part.index >= 0:
			if n.Kind != yaml.SequenceNode || part.index >= len(n.Content) {
				return lineSuffix(line)
			}
			n = n.Content[part.index]
			line = n.Line
		default:
			if n.Kind != yaml.MappingNode {
				return lineSuffix(line)
			}
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == part.key {
					line = n.Content[i].Line
					n = n.Content[i+1]
					found = true
					break
				}
			}
			if !found {
				return lineSuffix(line)
			}
		}
	}
	return lineSuffix(line)
}

func lineSuffix(line int) string {
	if line == 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", line)
}

type pathPart struct {
	key   string
	index int
}

func splitKeyPath(key string) []pathPart {
	var parts []pathPart
	for _, seg := range strings.Split(key, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if name != "" {
			parts = append(parts, pathPart{key: name, index: -1})
		}
		for rest != "" {
			var idx int
			var tail string
			if _, err := fmt.Sscanf(rest, "%d]", &idx); err != nil {
				break
			}
			parts = append(parts, pathPart{index: idx})
			_, tail, _ = strings.Cut(rest, "]")
			_, rest, _ = strings.Cut(tail, "[")
		}
	}
	return parts
}
