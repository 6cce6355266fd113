// A program that checks for upgrades the way Longhorn, Rancher Desktop, Harvester and
// Epinio do: with upgrade-responder's own client, unmodified. It runs one check through
// the checker's Start loop (the path those programs use) and prints what the client got,
// as JSON, for tests/test_upgrade_responder_client.py.
//
//	upgraderesponder -url http://127.0.0.1:8080/apps/longhorn/v1/checkupgrade \
//	    -version v1.4.0 -extra kubernetesVersion=v1.28.2 -extra nodeCount=3
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/longhorn/upgrade-responder/client"
)

type requester struct {
	version string
	extra   map[string]string
	got     chan outcome
}

type outcome struct {
	Response *client.CheckUpgradeResponse `json:"response"`
	Error    string                       `json:"error,omitempty"`
}

func (r *requester) GetCurrentVersion() string       { return r.version }
func (r *requester) GetExtraInfo() map[string]string { return r.extra }
func (r *requester) ProcessUpgradeResponse(resp *client.CheckUpgradeResponse, err error) {
	out := outcome{Response: resp}
	if err != nil {
		out.Error = err.Error()
	}
	r.got <- out
}

type pairs map[string]string

func (p pairs) String() string { return fmt.Sprint(map[string]string(p)) }
func (p pairs) Set(v string) error {
	key, value, ok := strings.Cut(v, "=")
	if !ok {
		return fmt.Errorf("want key=value, got %q", v)
	}
	p[key] = value
	return nil
}

func main() {
	url := flag.String("url", "", "the checkupgrade URL")
	version := flag.String("version", "", "the application's version")
	extra := pairs{}
	flag.Var(extra, "extra", "extra info key=value (repeatable)")
	flag.Parse()

	r := &requester{version: *version, extra: extra, got: make(chan outcome, 1)}
	checker := client.NewUpgradeChecker(*url, r)
	checker.Start()
	select {
	case out := <-r.got:
		checker.Stop()
		json.NewEncoder(os.Stdout).Encode(out)
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "no answer within 60s")
		os.Exit(1)
	}
}
