package testbed

import (
	"os"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// RunConfig is a `lockstep run` configuration file as the harnesses write
// it (the playground, the daemon and cluster tests, the failover
// benchmark), so that the file's shape is known in one place.
type RunConfig struct {
	// Comment is written first, as `#` lines.
	Comment string
	Node    string
	Listen  string
	// Sync and Repl are whole sections ("sync:\n  - ...", "repl:\n  ..."),
	// written verbatim when set.
	Sync, Repl string
	KeyFile    string
	// Keepalive and Deadtime are left to their defaults when zero, as is
	// the agent check when AgentCheck is empty.
	Keepalive, Deadtime time.Duration
	AgentCheck          string
	Witness             []string
	// StateDir is cluster.state_dir; set it per node in tests, or the
	// daemons share (and keep) /var/lib/lockstep's resource failures.
	StateDir string
	// ClusterExtra is more of the cluster: section, verbatim, its lines
	// indented by two spaces.
	ClusterExtra string
	Members      []Member
	Resources    []Resource
}

// Member is one entry of cluster.nodes; DB names its database node.
type Member struct{ Name, Address, DB string }

// Resource is an ipaddr resource (VIP and Dev) or an exec one (Exec, with
// Timeout unless zero). Extra is more keys of the entry, verbatim, one
// "key: value" each (e.g. "monitor_interval: 500ms").
type Resource struct {
	VIP, Dev string
	Exec     string
	Timeout  time.Duration
	Extra    []string
}

var runConfigTmpl = template.Must(template.New("run").Funcs(template.FuncMap{
	"q": strconv.Quote,
	"comment": func(s string) string {
		return "# " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n# ")
	},
	"section": func(s string) string { return strings.TrimRight(s, "\n") },
}).Parse(`{{if .Comment}}{{comment .Comment}}
{{end}}node: {{q .Node}}
listen: {{q .Listen}}
{{- if .Sync}}
{{section .Sync}}
{{- end}}
{{- if .Repl}}
{{section .Repl}}
{{- end}}
cluster:
  key_file: {{q .KeyFile}}
{{- if .Keepalive}}
  keepalive: {{.Keepalive}}
{{- end}}
{{- if .Deadtime}}
  deadtime: {{.Deadtime}}
{{- end}}
{{- if .AgentCheck}}
  agent_check: {{q .AgentCheck}}
{{- end}}
  witness: [{{range $i, $w := .Witness}}{{if $i}}, {{end}}{{q $w}}{{end}}]
{{- if .StateDir}}
  state_dir: {{q .StateDir}}
{{- end}}
{{- if .ClusterExtra}}
{{section .ClusterExtra}}
{{- end}}
  nodes:
{{- range .Members}}
    - {name: {{q .Name}}, address: {{q .Address}}{{if .DB}}, db: {{q .DB}}{{end}}}
{{- end}}
  resources:
{{- range .Resources}}
{{- if .VIP}}
    - {ipaddr: {{q .VIP}}, dev: {{q .Dev}}{{range .Extra}}, {{.}}{{end}}}
{{- else}}
    - exec: {{q .Exec}}
{{- if .Timeout}}
      timeout: {{.Timeout}}
{{- end}}
{{- range .Extra}}
      {{.}}
{{- end}}
{{- end}}
{{- end}}
`))

// YAML renders the file.
func (c RunConfig) YAML() string {
	var b strings.Builder
	if err := runConfigTmpl.Execute(&b, c); err != nil {
		panic(err) // the template only formats fields: a failure is a bug here
	}
	return b.String()
}

// Write writes the file to path, readable by its owner only: a repl
// section's DSNs carry the monitoring password.
func (c RunConfig) Write(path string) error {
	return os.WriteFile(path, []byte(c.YAML()), 0o600)
}
