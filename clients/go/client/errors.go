package client

// Error reports: an error tick for a Go error, sent to Metronome's POST /tick.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"time"
	"unicode/utf8"
)

// Tick is one event for POST /tick: its item ("id"), its "event", when ("ts", epoch ms)
// and any other fields (parameters, or an error's description).
type Tick map[string]interface{}

const (
	maxErrorMessage = 1024   // characters of an error's message the server keeps
	maxErrorStack   = 16_384 // characters of its stack
	maxStackFrames  = 64
)

// ErrorTick describes err as an error tick for itemID (the page, endpoint or job that
// failed): its type, message, the stack of the goroutine that calls ErrorTick (in Go's
// panic format: function, then file and line), and that caller's file and line as source
// and line. The server groups errors by type, message (numbers, ids and urls aside) and
// the innermost frame, so report an error where it is handled, once.
func ErrorTick(itemID string, err error) Tick {
	return errorTick(itemID, err, 3)
}

// errorTick is ErrorTick with the stack from the frame skip levels up (runtime.Callers:
// 0 is Callers, 1 errorTick, 2 its caller in this package, 3 that one's caller).
func errorTick(itemID string, err error, skip int) Tick {
	tick := Tick{"id": itemID, "event": "error", "ts": time.Now().UnixMilli()}
	if err == nil {
		return tick
	}
	tick["type"] = fmt.Sprintf("%T", err)
	tick["message"] = truncate(err.Error(), maxErrorMessage)
	pcs := make([]uintptr, maxStackFrames)
	n := runtime.Callers(skip, pcs)
	frames := runtime.CallersFrames(pcs[:n])
	var stack strings.Builder
	stack.WriteString("goroutine [running]:\n")
	first := true
	for {
		frame, more := frames.Next()
		if first {
			tick["source"], tick["line"] = frame.File, frame.Line
			first = false
		}
		fmt.Fprintf(&stack, "%s(...)\n\t%s:%d\n", frame.Function, frame.File, frame.Line)
		if !more {
			break
		}
	}
	tick["stack"] = truncate(stack.String(), maxErrorStack)
	return tick
}

func truncate(text string, limit int) string {
	if utf8.RuneCountInString(text) <= limit {
		return text
	}
	return string([]rune(text)[:limit])
}

// SendTick posts one tick to server's POST /tick (server is the base URL, such as
// https://metronome.example.org) with key as its bearer key when not empty, and returns
// the event id Metronome gave it. An answer other than 202 is a *StatusError. httpClient
// sends it (http.DefaultClient when nil); ctx bounds it.
func SendTick(ctx context.Context, httpClient *http.Client, server, key string, tick Tick) (string, error) {
	body, err := json.Marshal(tick)
	if err != nil {
		return "", fmt.Errorf("encoding the tick: %w", err)
	}
	target := strings.TrimRight(server, "/") + "/tick"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	if err != nil {
		return "", fmt.Errorf("reading the answer: %w", err)
	}
	var shaped struct {
		ID      string `json:"id"`
		Error   string `json:"error"`
		Message string `json:"message"`
	}
	parsed := json.Unmarshal(answer, &shaped) == nil
	if resp.StatusCode != http.StatusAccepted {
		failed := &StatusError{StatusCode: resp.StatusCode, Body: string(answer)}
		if parsed {
			failed.Code, failed.Message = shaped.Error, shaped.Message
		}
		return "", failed
	}
	return shaped.ID, nil
}

// SendError reports err at itemID to server now: SendTick of ErrorTick, with the
// stack and source of SendError's caller.
func SendError(ctx context.Context, httpClient *http.Client, server, key, itemID string, err error) (string, error) {
	tick := errorTick(itemID, err, 3)
	return SendTick(ctx, httpClient, server, key, tick)
}
