package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

type quotaError struct{ used int }

func (e *quotaError) Error() string { return fmt.Sprintf("quota exceeded: %d of 100 used", e.used) }

// TestSendErrorReportsTheErrorAndWhereItWasHandled sends one error tick to the running
// Metronome for item go-error-<instance>; the Python side (tests/test_telemetry_clients.py)
// then reads it back from the store and checks its group.
func TestSendErrorReportsTheErrorAndWhereItWasHandled(t *testing.T) {
	server := env(t, "METRONOME_URL")
	item := "go-error-" + env(t, "METRONOME_TEST_INSTANCE")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := fmt.Errorf("saving the report: %w", &quotaError{used: 107})
	id, sendErr := SendError(ctx, nil, server, "", item, err)
	if sendErr != nil {
		t.Fatalf("SendError: %v", sendErr)
	}
	if id == "" {
		t.Fatal("no event id in the answer")
	}
}

func TestErrorTickDescribesTheErrorAtItsCaller(t *testing.T) {
	tick := ErrorTick("/jobs/export", &quotaError{used: 3})
	if tick["event"] != "error" || tick["id"] != "/jobs/export" {
		t.Fatalf("not an error tick for the item: %v", tick)
	}
	if tick["type"] != "*client.quotaError" || tick["message"] != "quota exceeded: 3 of 100 used" {
		t.Fatalf("type and message: %v %v", tick["type"], tick["message"])
	}
	source, _ := tick["source"].(string)
	if !strings.HasSuffix(source, "errors_test.go") || tick["line"].(int) <= 0 {
		t.Fatalf("source and line are not this test's: %v:%v", tick["source"], tick["line"])
	}
	stack, _ := tick["stack"].(string)
	first := strings.SplitN(stack, "\n", 4)
	if len(first) < 3 || !strings.Contains(first[1], "TestErrorTickDescribesTheErrorAtItsCaller") {
		t.Fatalf("the stack does not begin at the caller: %q", stack)
	}
	if ErrorTick("x", nil)["message"] != nil {
		t.Fatal("a nil error has no message")
	}
	long := ErrorTick("x", errors.New(strings.Repeat("é", maxErrorMessage+10)))
	if got := len([]rune(long["message"].(string))); got != maxErrorMessage {
		t.Fatalf("the message is %d characters, not cut to %d", got, maxErrorMessage)
	}
}

func TestSendTickReportsTheServersRefusal(t *testing.T) {
	server := env(t, "METRONOME_URL")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := SendTick(ctx, nil, server, "", Tick{"event": "error"}) // no item id
	var refused *StatusError
	if !errors.As(err, &refused) || refused.StatusCode != 400 || refused.Code == "" {
		t.Fatalf("want a 400 StatusError with a code, got %v", err)
	}
}
