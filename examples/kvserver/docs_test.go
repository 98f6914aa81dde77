package main

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The deployment files only set environment variables kvserver reads, and
// the container files probe it with "kvserver health".
func TestDeploymentFilesUseKnownVariables(t *testing.T) {
	known := map[string]bool{
		// run-local.sh's own settings.
		"KV_LOCAL_DIR": true, "KV_LOCAL_STOP_TIMEOUT": true,
	}
	for _, v := range envVars {
		known[v] = true
	}
	re := regexp.MustCompile(`KV_[A-Z_]+`)
	for _, f := range []string{"Dockerfile", "docker-compose.yml", "kubernetes.yaml", "run-local.sh"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllString(string(b), -1) {
			if !known[m] {
				t.Errorf("%s sets %s, which kvserver does not read", f, m)
			}
		}
	}
	for f, probe := range map[string]string{
		"Dockerfile":         `(?m)^HEALTHCHECK [^\n]*(\\\n[^\n]*)?CMD \["/kvserver", "health"`,
		"docker-compose.yml": `(?m)^  healthcheck:\n\s+test: \["CMD", "/kvserver", "health"`,
	} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(probe).Match(b) {
			t.Errorf("%s has no healthcheck running /kvserver health (%s)", f, probe)
		}
	}
}

// The README's configuration table has a row for each flag, with its
// variable.
func TestREADME_DocumentsEveryFlag(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if m := regexp.MustCompile("^\\| `-([a-z-]+)` \\| `(KV_[A-Z_]+)` \\|").FindStringSubmatch(line); m != nil {
			rows[m[1]] = m[2]
		}
	}
	for flagName, env := range envVars {
		if rows[flagName] != env {
			t.Errorf("README's configuration table: -%s has %q, want a row with %s", flagName, rows[flagName], env)
		}
	}
}

// The tour finds the leader before it kills it, and its curl commands show
// their errors (-sS, not -s).
func TestREADME_TourFindsTheLeader(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	if m := regexp.MustCompile(`curl -s[^S]`).FindString(readme); m != "" {
		t.Errorf("README uses %q: curl -s hides errors such as connection refused, use -sS", m)
	}
	line := regexp.MustCompile(`(?m)^leader=\$\(curl .*\)$`).FindString(readme)
	if line == "" {
		t.Fatal("README's tour has no leader=$(curl ...) line")
	}
	kill := strings.Index(readme, "kill -9")
	if kill < 0 || kill < strings.Index(readme, line) || !strings.Contains(readme[kill:kill+60], "node$leader.pid") {
		t.Fatal("README's tour does not kill -9 the node it found leading")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl to run the README's line with")
	}
	srv := serve(t, openStore(t, "node3", 1), time.Second)
	line = strings.ReplaceAll(line, "127.0.0.1:8001", strings.TrimPrefix(srv.URL, "http://"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", "-c", line+`; echo "$leader"`).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "3" {
		t.Fatalf("README's leader line against node3 leading: %v, output %q, want 3", err, out)
	}
}
