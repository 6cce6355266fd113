// Package client reports an application's telemetry to Metronome (or to any server that
// speaks the binoculars wire contract).
//
// It is a drop-in for the binoculars client: the same type and method names
// (BinocularsClientAgent, NewBinocularsClientAgent, MetricHandler with GatherMetrics and
// HandleResponse, Metric, Metrics, ServerResponse, Start, Stop), so a program switches by
// changing the import path. On the wire it does what that client does: POST
// {"metrics": [...]} as application/json to the agent's address, treat any status but 200
// as an error, and read requestIntervalInMinutes from the answer to decide when to send
// next. It adds what a fleet of thousands of installations needs:
//
//   - a timeout on every request (RequestTimeout), so a hung server never stalls the agent;
//   - capped exponential backoff with jitter after an error (InitialBackoff, MaxBackoff),
//     so instances that failed together do not retry together;
//   - an optional per-app token (Token), sent as the token query parameter;
//   - Start and Stop that are idempotent and safe from many goroutines, StartContext that
//     stops when a context ends, and Shutdown that waits for the agent to finish.
//
// Written for Metronome from the wire behaviour; it shares no code with binoculars.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Metric is one point: Name is the measurement, Tags are indexed strings, Fields are
// values (numbers, or booleans stored as 0 and 1).
type Metric struct {
	Name   string                 `json:"name"`
	Tags   map[string]string      `json:"tags"`
	Fields map[string]interface{} `json:"fields"`
}

// Metrics is what an agent sends in one request.
type Metrics []Metric

// ServerResponse is the server's answer; RequestIntervalInMinutes is when to send next.
// Metronome adds a list of the metrics it refused (Refused); other servers leave it empty.
type ServerResponse struct {
	RequestIntervalInMinutes int       `json:"requestIntervalInMinutes"`
	Refused                  []Refusal `json:"refused,omitempty"`
}

// Refusal is a metric the server did not store (by its Index in the request), or with
// Field set one field of it that was left out, and why.
type Refusal struct {
	Index  int    `json:"index"`
	Reason string `json:"reason"`
	Field  string `json:"field,omitempty"`
}

// MetricHandler gathers the metrics before each request and is told how it went.
// HandleResponse gets either an answer or an error (a *StatusError for an answer that
// was not 200). Both are called from the agent's own goroutine, one call at a time.
type MetricHandler interface {
	GatherMetrics() Metrics
	HandleResponse(response *ServerResponse, err error)
}

// StatusError is an answer whose status was not 200. Metronome's errors carry a stable
// code (Code) and a message a person can act on.
type StatusError struct {
	StatusCode int
	Code       string
	Message    string
	Body       string
}

func (e *StatusError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("server answered %d %s: %s", e.StatusCode, e.Code, e.Message)
	}
	return fmt.Sprintf("server answered %d: %s", e.StatusCode, e.Body)
}

const (
	// DefaultRequestInterval is used until the server says otherwise.
	DefaultRequestInterval = time.Hour
	// DefaultRequestTimeout bounds each request, connection included.
	DefaultRequestTimeout = 30 * time.Second
	// DefaultInitialBackoff is the first wait after an error (with jitter).
	DefaultInitialBackoff = time.Minute
	// DefaultMaxBackoff caps the wait after repeated errors.
	DefaultMaxBackoff = time.Hour
	maxAnswerBytes    = 1 << 20
)

// minute is the length of the server's minute. Tests in this package shorten it so that
// the server's intervals (whole minutes) can be observed in seconds.
var minute = time.Minute

// BinocularsClientAgent sends the handler's metrics to ServerAddress (the full URL, for
// Metronome http(s)://host/v1/metrics or /apps/{app}/v1/metrics) in the background.
// Set the exported fields before Start; the zero values mean the defaults above.
type BinocularsClientAgent struct {
	ServerAddress          string
	MetricHandler          MetricHandler
	DefaultRequestInterval time.Duration

	// Token is the app's URL token, when the app requires one (sent as ?token=...).
	Token string
	// RequestTimeout bounds each request (DefaultRequestTimeout when zero).
	RequestTimeout time.Duration
	// InitialBackoff and MaxBackoff shape the waits after errors: the n-th error in a row
	// waits a random time between half and all of min(InitialBackoff*2^(n-1), MaxBackoff).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// HTTPClient sends the requests (a client of its own when nil).
	HTTPClient *http.Client

	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
	rng    *rand.Rand
	rngMu  sync.Mutex
	client *http.Client
}

// NewBinocularsClientAgent makes an agent that sends handler's metrics to address.
func NewBinocularsClientAgent(address string, handler MetricHandler) *BinocularsClientAgent {
	return &BinocularsClientAgent{
		ServerAddress:          address,
		MetricHandler:          handler,
		DefaultRequestInterval: DefaultRequestInterval,
	}
}

// Start begins sending in the background: one request now, then one per interval.
// Calling it while the agent runs does nothing.
func (a *BinocularsClientAgent) Start() {
	a.StartContext(context.Background())
}

// StartContext is Start with a context: the agent stops when ctx ends (or on Stop), and
// an in-flight request is abandoned. Calling it while the agent runs does nothing.
func (a *BinocularsClientAgent) StartContext(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done != nil {
		select {
		case <-a.done: // the previous run ended (its context was cancelled): start again
		default:
			return
		}
	}
	runCtx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	a.done = make(chan struct{})
	go a.run(runCtx, a.done)
}

// Stop ends the background sending: it returns at once, abandons an in-flight request and
// makes no further requests. Calling it when the agent is stopped does nothing; it is
// safe from any goroutine, HandleResponse included. Use Shutdown to also wait.
func (a *BinocularsClientAgent) Stop() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cancel != nil {
		a.cancel()
	}
}

// Shutdown stops the agent and waits until its goroutine has ended (so the handler will
// not be called again), or until ctx ends. Do not call it from HandleResponse.
func (a *BinocularsClientAgent) Shutdown(ctx context.Context) error {
	a.mu.Lock()
	done := a.done
	if a.cancel != nil {
		a.cancel()
	}
	a.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IsRunning says whether the agent is sending in the background.
func (a *BinocularsClientAgent) IsRunning() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// SendMetrics sends metrics once, now, and returns the server's answer. It does not
// call the handler. An answer other than 200 is a *StatusError.
func (a *BinocularsClientAgent) SendMetrics(ctx context.Context, metrics Metrics) (*ServerResponse, error) {
	target, err := a.target()
	if err != nil {
		return nil, err
	}
	if metrics == nil {
		metrics = Metrics{}
	}
	body, err := json.Marshal(struct {
		Metrics Metrics `json:"metrics"`
	}{metrics})
	if err != nil {
		return nil, fmt.Errorf("encoding the metrics: %w", err)
	}
	timeout := a.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.httpClient().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		failed := &StatusError{StatusCode: resp.StatusCode, Body: string(answer)}
		var shaped struct {
			Error   string `json:"error"`
			Message string `json:"message"`
		}
		if json.Unmarshal(answer, &shaped) == nil {
			failed.Code, failed.Message = shaped.Error, shaped.Message
		}
		return nil, failed
	}
	var parsed ServerResponse
	if err := json.Unmarshal(answer, &parsed); err != nil {
		return nil, fmt.Errorf("the answer is not the expected JSON: %w", err)
	}
	return &parsed, nil
}

func (a *BinocularsClientAgent) target() (string, error) {
	if a.Token == "" {
		return a.ServerAddress, nil
	}
	parsed, err := url.Parse(a.ServerAddress)
	if err != nil {
		return "", fmt.Errorf("bad server address %q: %w", a.ServerAddress, err)
	}
	query := parsed.Query()
	query.Set("token", a.Token)
	parsed.RawQuery = query.Encode()
	return parsed.String(), nil
}

func (a *BinocularsClientAgent) httpClient() *http.Client {
	if a.HTTPClient != nil {
		return a.HTTPClient
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.client == nil {
		a.client = &http.Client{}
	}
	return a.client
}

// backoff is how long to wait after the n-th error in a row (n >= 1): a random duration
// in [d/2, d] where d = min(InitialBackoff * 2^(n-1), MaxBackoff).
func (a *BinocularsClientAgent) backoff(n int) time.Duration {
	initial, ceiling := a.InitialBackoff, a.MaxBackoff
	if initial <= 0 {
		initial = DefaultInitialBackoff
	}
	if ceiling <= 0 {
		ceiling = DefaultMaxBackoff
	}
	d := initial
	for i := 1; i < n && d < ceiling; i++ {
		d *= 2
	}
	if d > ceiling {
		d = ceiling
	}
	a.rngMu.Lock()
	defer a.rngMu.Unlock()
	if a.rng == nil {
		a.rng = rand.New(rand.NewSource(time.Now().UnixNano()))
	}
	half := d / 2
	return half + time.Duration(a.rng.Int63n(int64(d-half)+1))
}

func (a *BinocularsClientAgent) run(ctx context.Context, done chan struct{}) {
	defer close(done)
	interval := a.DefaultRequestInterval
	if interval <= 0 {
		interval = DefaultRequestInterval
	}
	failures := 0
	for {
		metrics := a.MetricHandler.GatherMetrics()
		resp, err := a.SendMetrics(ctx, metrics)
		if ctx.Err() != nil {
			return // stopped: the request was abandoned, nobody waits for its outcome
		}
		a.MetricHandler.HandleResponse(resp, err)
		wait := interval
		if err != nil {
			failures++
			wait = a.backoff(failures)
		} else {
			failures = 0
			if resp.RequestIntervalInMinutes > 0 {
				interval = time.Duration(resp.RequestIntervalInMinutes) * minute
			}
			wait = interval
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}
