package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sample returns the value of the series name whose labels include every
// one of labels (`node="node1"`, `result="ok"`) in a Prometheus text
// exposition, and whether there is one.
func sample(body []byte, name string, labels ...string) (float64, bool) {
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		return v, err == nil
	}
	return 0, false
}

// Three kvserver processes scraped through a kill -9 of their leader: the
// survivors count the change of leader, know the new one, go on counting
// writes, and report the killed member dead.
func TestE2E_MetricsThroughLeaderKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs three processes")
	}
	dir := t.TempDir()
	bin := buildKVServer(t)
	ports := freePorts(t, 9)
	cmds := make([]*exec.Cmd, 3)
	https := make([]string, 3)
	for i := range cmds {
		var join []string
		for j := range 3 {
			if j != i {
				join = append(join, fmt.Sprintf("127.0.0.1:%d", ports[3+j]))
			}
		}
		https[i] = fmt.Sprintf("127.0.0.1:%d", ports[6+i])
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		defer log.Close()
		cmds[i] = exec.Command(bin,
			"-node-id", fmt.Sprintf("node%d", i+1),
			"-data-dir", filepath.Join(dir, fmt.Sprintf("node%d", i+1)),
			"-bind", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"-gossip", fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			"-http", https[i],
			"-bootstrap-expect", "3",
			"-join", strings.Join(join, ","))
		cmds[i].Stdout, cmds[i].Stderr = log, log
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i, c := range cmds {
			if c.ProcessState == nil {
				c.Process.Kill()
				c.Wait()
			}
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("node%d.log", i+1)))
				t.Logf("node%d log (tail):\n%s", i+1, tail(string(b), 3000))
			}
		}
	})
	client := &http.Client{Timeout: 5 * time.Second}
	scrape := func(i int) []byte {
		resp, err := client.Get("http://" + https[i] + "/metrics")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return nil
		}
		return b
	}
	node := func(i int) string { return fmt.Sprintf(`node="node%d"`, i+1) }
	value := func(i int, name string, labels ...string) float64 {
		v, _ := sample(scrape(i), name, append(labels, node(i))...)
		return v
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	leader := func(among []int) int {
		for _, i := range among {
			if value(i, "cohortkv_is_leader") == 1 {
				return i
			}
		}
		return -1
	}
	all := []int{0, 1, 2}
	waitFor("every member to know a leader", func() bool {
		for _, i := range all {
			if value(i, "cohortkv_has_leader") != 1 {
				return false
			}
		}
		return leader(all) >= 0
	})
	lead := leader(all)
	var survivors []int
	for _, i := range all {
		if i != lead {
			survivors = append(survivors, i)
		}
	}
	set := func(i int, key string) error {
		resp, err := client.Post("http://"+https[i]+"/api/set", "application/json", strings.NewReader(fmt.Sprintf(`{"key":%q,"value":"v"}`, key)))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
		return nil
	}
	f := survivors[0]
	for k := range 20 {
		if err := set(f, fmt.Sprintf("before/%d", k)); err != nil {
			t.Fatal(err)
		}
	}
	if v := value(f, "cohortkv_writes_total", `result="ok"`); v < 20 {
		t.Fatalf("writes_total{result=\"ok\"} on node%d after 20 writes: %v", f+1, v)
	}
	okBefore := value(f, "cohortkv_writes_total", `result="ok"`)
	changes := map[int]float64{}
	for _, i := range survivors {
		changes[i] = value(i, "cohortkv_leader_changes_seen_total")
		if changes[i] < 1 {
			t.Fatalf("node%d: leader_changes_seen_total %v with a leader known", i+1, changes[i])
		}
	}

	if err := cmds[lead].Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmds[lead].Wait()
	waitFor("a new leader among the survivors", func() bool {
		for _, i := range survivors {
			if value(i, "cohortkv_has_leader") != 1 || value(i, "cohortkv_leader_changes_seen_total") <= changes[i] {
				return false
			}
		}
		return leader(survivors) >= 0
	})
	if err := set(f, "after"); err != nil {
		t.Fatalf("a write after the leader's kill: %v", err)
	}
	if v := value(f, "cohortkv_writes_total", `result="ok"`); v != okBefore+1 {
		t.Errorf("writes_total{result=\"ok\"} on node%d: %v after one more write, want %v", f+1, v, okBefore+1)
	}
	waitFor("the killed member reported dead", func() bool {
		for _, i := range survivors {
			if value(i, "cohortkv_members", `status="dead"`) != 1 || value(i, "cohortkv_members", `status="alive"`) != 2 {
				return false
			}
		}
		return true
	})
}
