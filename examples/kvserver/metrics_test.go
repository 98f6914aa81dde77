package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// metricName finds the cohortkv series a file names.
var metricName = regexp.MustCompile(`\bcohortkv_[a-z0-9_]+`)

// scrapedNames returns the metric family names (# TYPE lines) and sample
// names of a Prometheus text exposition.
func scrapedNames(t *testing.T, body []byte) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			names[line[:i]] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names
}

// namesIn returns the cohortkv_* names file mentions, sorted.
func namesIn(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, n := range metricName.FindAllString(string(b), -1) {
		seen[n] = true
	}
	var out []string
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	if len(out) == 0 {
		t.Fatalf("%s names no cohortkv_ series", file)
	}
	return out
}

// A running kvserver serves /metrics with the Store's series, Go's and
// the process's; every cohortkv_ series that alerts.yml and the Grafana
// dashboard use is among them, so that renaming one breaks this test.
func TestMetrics_AlertsAndDashboardUseServedNames(t *testing.T) {
	addr, _, _ := startRun(t, testOptions(t))
	code, h, body := do(t, "GET", "http://"+addr+"/metrics", nil)
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q", ct)
	}
	served := scrapedNames(t, body)
	for _, want := range []string{"go_goroutines", "process_resident_memory_bytes", "cohortkv_has_leader", "cohortkv_writes_total"} {
		if !served[want] {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if !strings.Contains(string(body), `cohortkv_has_leader{node="n1"}`) {
		t.Errorf("/metrics lacks has_leader with the node label:\n%s", body)
	}
	for _, file := range []string{"alerts.yml", "alerts_test.yml", "grafana-dashboard.json"} {
		for _, n := range namesIn(t, file) {
			if !served[n] {
				t.Errorf("%s uses %s, which kvserver does not serve", file, n)
			}
		}
	}
}

// The dashboard is valid JSON, and, where promtool is installed, each of
// its queries parses as PromQL (with Grafana's variables filled in).
func TestGrafanaDashboard_QueriesParse(t *testing.T) {
	b, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	n := 0
	fill := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$node", ".*")
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q has a target without a query", p.Title)
				continue
			}
			n++
			q, _ := json.Marshal(fill.Replace(tg.Expr)) // a JSON string is a YAML string
			fmt.Fprintf(&rules, "      - record: dashboard:query%d\n        expr: %s\n", n, q)
		}
	}
	if n == 0 {
		t.Fatal("the dashboard has no queries")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed: queries not parsed")
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(f, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s\n%s", err, out, rules.String())
	}
}
