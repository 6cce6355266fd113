package client

// These tests talk to a real, running Metronome; tests/test_go_client.py starts one, makes
// the apps below and runs `go test -race ./...` with:
//
//	METRONOME_URL             the server, e.g. http://127.0.0.1:8080
//	METRONOME_TEST_APP        an app whose interval is 2 minutes
//	METRONOME_TEST_TOKEN_APP  an app that requires a URL token...
//	METRONOME_TEST_TOKEN      ...this one
//	METRONOME_TEST_INSTANCE   the instance_uuid to tag points with (the Python side then
//	                          checks they were stored)
//
// Without them the tests fail (they are not skipped). The server's minute is shortened
// to `unit` so its intervals can be watched in seconds.

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const unit = 250 * time.Millisecond

func env(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: run these tests through tests/test_go_client.py (scripts/test),"+
			" which starts Metronome and sets it", name)
	}
	return value
}

func appURL(t *testing.T, app string) string {
	return strings.TrimRight(env(t, "METRONOME_URL"), "/") + "/apps/" + app + "/v1/metrics"
}

// recorder is a MetricHandler that remembers every call, with when it happened.
type recorder struct {
	mu        sync.Mutex
	metrics   Metrics
	gathered  []time.Time
	handled   []time.Time
	responses []*ServerResponse
	errs      []error
	changed   chan struct{}
}

func newRecorder(metrics Metrics) *recorder {
	return &recorder{metrics: metrics, changed: make(chan struct{}, 1000)}
}

func (r *recorder) GatherMetrics() Metrics {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gathered = append(r.gathered, time.Now())
	return r.metrics
}

func (r *recorder) HandleResponse(resp *ServerResponse, err error) {
	r.mu.Lock()
	r.handled = append(r.handled, time.Now())
	r.responses = append(r.responses, resp)
	r.errs = append(r.errs, err)
	r.mu.Unlock()
	r.changed <- struct{}{}
}

// waitHandled waits until the handler was told about n requests.
func (r *recorder) waitHandled(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		r.mu.Lock()
		got := len(r.handled)
		r.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("only %d of %d answers within %s", got, n, within)
		}
	}
}

func (r *recorder) snapshot() ([]time.Time, []time.Time, []*ServerResponse, []error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.gathered...), append([]time.Time(nil), r.handled...),
		append([]*ServerResponse(nil), r.responses...), append([]error(nil), r.errs...)
}

func fleetMetrics(t *testing.T, version string) Metrics {
	instance := env(t, "METRONOME_TEST_INSTANCE")
	return Metrics{
		{
			Name:   "storage_capacity",
			Tags:   map[string]string{"instance_uuid": instance, "app_version": version},
			Fields: map[string]interface{}{"value": 1000000000000},
		},
		{
			Name:   "enabled_feature",
			Tags:   map[string]string{"instance_uuid": instance, "app_version": version},
			Fields: map[string]interface{}{"node_selector": 1, "data_locality": true},
		},
	}
}

func TestMain(m *testing.M) {
	minute = unit
	os.Exit(m.Run())
}

func TestAgentSendsTheGatheredMetricsAndObeysTheServersInterval(t *testing.T) {
	handler := newRecorder(fleetMetrics(t, "v1.4.0"))
	agent := NewBinocularsClientAgent(appURL(t, env(t, "METRONOME_TEST_APP")), handler)
	agent.DefaultRequestInterval = 20 * unit // until the server's answer says 2
	agent.Start()
	defer agent.Shutdown(context.Background())

	handler.waitHandled(t, 3, 30*time.Second)
	if err := agent.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	gathered, handled, responses, errs := handler.snapshot()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("request %d failed: %v", i, err)
		}
		if got := responses[i].RequestIntervalInMinutes; got != 2 {
			t.Fatalf("request %d: requestIntervalInMinutes = %d, want the app's 2", i, got)
		}
		if len(responses[i].Refused) != 0 {
			t.Fatalf("request %d: metrics refused: %+v", i, responses[i].Refused)
		}
	}
	// The first request goes out at once; each next one 2 server-minutes after the answer
	// before it: not the 20 of DefaultRequestInterval, and not sooner.
	for i := 1; i < len(gathered) && i < len(handled); i++ {
		gap := gathered[i].Sub(handled[i-1])
		if gap < 2*unit-10*time.Millisecond || gap > 10*unit {
			t.Fatalf("gap before request %d was %s, want about %s", i, gap, 2*unit)
		}
	}
}

func TestAgentBacksOffWithJitterAfterErrorsAndTellsTheHandler(t *testing.T) {
	handler := newRecorder(fleetMetrics(t, "v1.4.0"))
	agent := NewBinocularsClientAgent(appURL(t, "no-such-app"), handler)
	agent.InitialBackoff = unit
	agent.MaxBackoff = 4 * unit
	agent.Start()
	handler.waitHandled(t, 5, 30*time.Second)
	if err := agent.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	gathered, handled, responses, errs := handler.snapshot()
	for i, err := range errs {
		var status *StatusError
		if !errors.As(err, &status) || status.StatusCode != http.StatusNotFound {
			t.Fatalf("answer %d: want a 404 StatusError, got %v", i, err)
		}
		if status.Code == "" || status.Message == "" || !strings.Contains(err.Error(), "no-such-app") {
			t.Fatalf("answer %d: the server's JSON error is not passed on: %v", i, err)
		}
		if responses[i] != nil {
			t.Fatalf("answer %d: a response with an error", i)
		}
	}
	// After the n-th error in a row: between half and all of min(unit * 2^(n-1), 4 units).
	for n := 1; n < len(gathered) && n < len(handled)+1; n++ {
		ceiling := unit << (n - 1)
		if ceiling > 4*unit {
			ceiling = 4 * unit
		}
		gap := gathered[n].Sub(handled[n-1])
		if gap < ceiling/2-10*time.Millisecond || gap > ceiling+500*time.Millisecond {
			t.Fatalf("wait after error %d was %s, want within [%s, %s]", n, gap, ceiling/2, ceiling)
		}
	}
}

func TestBackoffIsJitteredWithinItsBounds(t *testing.T) {
	agent := NewBinocularsClientAgent("http://unused", newRecorder(nil))
	agent.InitialBackoff = time.Second
	agent.MaxBackoff = 8 * time.Second
	seen := map[time.Duration]bool{}
	for n := 1; n <= 6; n++ {
		ceiling := time.Second << (n - 1)
		if ceiling > 8*time.Second {
			ceiling = 8 * time.Second
		}
		for i := 0; i < 200; i++ {
			d := agent.backoff(n)
			if d < ceiling/2 || d > ceiling {
				t.Fatalf("backoff(%d) = %s, outside [%s, %s]", n, d, ceiling/2, ceiling)
			}
			seen[d] = true
		}
	}
	if len(seen) < 1000 {
		t.Fatalf("only %d distinct waits in 1200 draws: not jittered", len(seen))
	}
}

func TestEveryRequestHasATimeout(t *testing.T) {
	// A server that accepts connections and never answers: a hung server, which the real
	// Metronome cannot be made into (a local stand-in, on purpose).
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hung.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := hung.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	agent := NewBinocularsClientAgent("http://"+hung.Addr().String()+"/v1/metrics", newRecorder(nil))
	agent.RequestTimeout = 300 * time.Millisecond
	started := time.Now()
	_, err = agent.SendMetrics(context.Background(), fleetMetrics(t, "v1"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a deadline error, got %v", err)
	}
	if took := time.Since(started); took > 5*time.Second {
		t.Fatalf("the request took %s despite a 300ms timeout", took)
	}
}

func TestTheTokenOpensAnAppThatRequiresOne(t *testing.T) {
	address := appURL(t, env(t, "METRONOME_TEST_TOKEN_APP"))
	without := NewBinocularsClientAgent(address, newRecorder(nil))
	_, err := without.SendMetrics(context.Background(), fleetMetrics(t, "v1.4.0"))
	var status *StatusError
	if !errors.As(err, &status) || (status.StatusCode != 401 && status.StatusCode != 403) {
		t.Fatalf("without the token: want 401 or 403, got %v", err)
	}
	with := NewBinocularsClientAgent(address, newRecorder(nil))
	with.Token = env(t, "METRONOME_TEST_TOKEN")
	resp, err := with.SendMetrics(context.Background(), fleetMetrics(t, "v1.4.0"))
	if err != nil || resp.RequestIntervalInMinutes <= 0 {
		t.Fatalf("with the token: %+v, %v", resp, err)
	}
}

func TestStartAndStopAreIdempotentFromManyGoroutines(t *testing.T) {
	handler := newRecorder(fleetMetrics(t, "v1.5.0"))
	agent := NewBinocularsClientAgent(appURL(t, env(t, "METRONOME_TEST_APP")), handler)
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				if (i+j)%3 == 0 {
					agent.Stop()
				} else {
					agent.Start()
				}
				agent.IsRunning()
			}
		}(i)
	}
	wg.Wait()
	agent.Stop()
	agent.Stop()
	if err := agent.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if agent.IsRunning() {
		t.Fatal("still running after Shutdown")
	}
	gathered, _, _, _ := handler.snapshot()
	time.Sleep(3 * unit)
	after, handled, _, _ := handler.snapshot()
	if len(after) != len(gathered) {
		t.Fatalf("gathered again after Shutdown: %d then %d", len(gathered), len(after))
	}

	// stopped, it starts again, once, however often it is asked
	for i := 0; i < 10; i++ {
		agent.Start()
	}
	handler.waitHandled(t, len(handled)+1, 30*time.Second)
	time.Sleep(unit / 2) // a second loop would have gathered at once too
	if err := agent.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	final, _, _, errs := handler.snapshot()
	if len(final) != len(after)+1 {
		t.Fatalf("ten Starts made %d requests, want 1", len(final)-len(after))
	}
	for i, err := range errs { // requests abandoned by Stop are not reported
		if err != nil {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
}

func TestStopFromTheHandlerAndACancelledContextEndTheAgent(t *testing.T) {
	handler := &stopping{recorder: newRecorder(fleetMetrics(t, "v1.5.0"))}
	agent := NewBinocularsClientAgent(appURL(t, env(t, "METRONOME_TEST_APP")), handler)
	handler.agent = agent
	agent.Start()
	handler.waitHandled(t, 1, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agent.Shutdown(ctx); err != nil {
		t.Fatalf("the agent did not end after Stop from its handler: %v", err)
	}

	ctx, cancelRun := context.WithCancel(context.Background())
	again := newRecorder(fleetMetrics(t, "v1.5.0"))
	agent2 := NewBinocularsClientAgent(appURL(t, env(t, "METRONOME_TEST_APP")), again)
	agent2.StartContext(ctx)
	again.waitHandled(t, 1, 30*time.Second)
	cancelRun()
	deadline := time.Now().Add(10 * time.Second)
	for agent2.IsRunning() {
		if time.Now().After(deadline) {
			t.Fatal("still running after its context was cancelled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Shutdown gives up when its own context ends first
	blocked := NewBinocularsClientAgent(appURL(t, env(t, "METRONOME_TEST_APP")), &slow{release: make(chan struct{})})
	blocked.Start()
	short, cancelShort := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancelShort()
	if err := blocked.Shutdown(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a handler still busy: want its deadline, got %v", err)
	}
	close(blocked.MetricHandler.(*slow).release)
	if err := blocked.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

type stopping struct {
	*recorder
	agent *BinocularsClientAgent
}

func (s *stopping) HandleResponse(resp *ServerResponse, err error) {
	s.recorder.HandleResponse(resp, err)
	s.agent.Stop()
}

// slow gathers only when released: the agent is busy in its handler until then.
type slow struct{ release chan struct{} }

func (s *slow) GatherMetrics() Metrics                { <-s.release; return Metrics{} }
func (s *slow) HandleResponse(*ServerResponse, error) {}
