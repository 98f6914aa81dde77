package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// client sends requests to the endpoints in order, moving on to the next
// when one cannot be reached or answers 503 (unavailable: no leader, shutting
// down, halted), and only then: any other answer is the answer.
type client struct {
	endpoints []string
	timeout   time.Duration
	http      *http.Client // one request, bounded by timeout
	stream    *http.Client // watch, backup, restore: bounded while connecting only
}

func newClient(endpoints []string, timeout time.Duration) *client {
	dialer := &net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{DialContext: dialer.DialContext, TLSHandshakeTimeout: timeout, MaxIdleConnsPerHost: 2}
	return &client{
		endpoints: endpoints,
		timeout:   timeout,
		http:      &http.Client{Transport: tr, Timeout: timeout},
		stream:    &http.Client{Transport: tr},
	}
}

// request is one call: how to make its body again for each endpoint, and
// whether it is safe to send again after it may have reached a server.
type request struct {
	method, path string
	body         func() (io.Reader, error) // nil: no body
	idempotent   bool                      // a read: any failure moves on to the next endpoint
	stream       bool                      // no total timeout
	order        []string                  // endpoints to try, if not all in order
}

// reply is an answer of an endpoint that is not "unavailable".
type reply struct {
	endpoint string
	resp     *http.Response // body open when stream; else read into body
	body     []byte
}

// object decodes the reply's JSON body.
func (r *reply) object() map[string]any {
	var m map[string]any
	json.Unmarshal(r.body, &m)
	return m
}

// serverMsg is the "error" of a JSON error answer, or the body's start.
func serverMsg(body []byte) string {
	var m struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &m) == nil && m.Error != "" {
		return m.Error
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// do sends req to the endpoints in turn and returns the first answer that is
// not unavailable. A 2xx answer returns (reply, nil); any other answer, the
// reply and its error, with the exit code the status calls for.
func (c *client) do(ctx context.Context, what string, req request) (*reply, error) {
	order := req.order
	if order == nil {
		order = c.endpoints
	}
	var tried []string
	for _, ep := range order {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var body io.Reader
		if req.body != nil {
			b, err := req.body()
			if err != nil {
				return nil, err
			}
			body = b
		}
		hreq, err := http.NewRequestWithContext(ctx, req.method, ep+req.path, body)
		if err != nil {
			return nil, &cliError{exitUsage, fmt.Sprintf("%s: %s: %v", what, ep, err)}
		}
		if req.body != nil {
			hreq.Header.Set("Content-Type", "application/octet-stream")
			if req.method == http.MethodPost && !req.stream {
				hreq.Header.Set("Content-Type", "application/json")
			}
		}
		hc := c.http
		if req.stream {
			hc = c.stream
		}
		resp, err := hc.Do(hreq)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if !req.idempotent && !notSent(err) {
				return nil, &cliError{exitUnknown, fmt.Sprintf("%s: %s: %v: the request may have reached the server; its outcome is unknown", what, ep, unwrapURL(err))}
			}
			tried = append(tried, fmt.Sprintf("%s: %v", ep, unwrapURL(err)))
			continue
		}
		r := &reply{endpoint: ep, resp: resp}
		if !req.stream || resp.StatusCode/100 != 2 {
			r.body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			resp.Body.Close()
			if err != nil {
				if !req.idempotent {
					return nil, &cliError{exitUnknown, fmt.Sprintf("%s: %s: reading the answer: %v: the outcome is unknown", what, ep, err)}
				}
				tried = append(tried, fmt.Sprintf("%s: reading the answer: %v", ep, err))
				continue
			}
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			tried = append(tried, fmt.Sprintf("%s: %s", ep, serverMsg(r.body)))
			continue
		}
		if resp.StatusCode/100 == 2 {
			return r, nil
		}
		return r, statusErr(what, r)
	}
	return nil, &cliError{exitUnavailable, fmt.Sprintf("%s: no endpoint available: %s", what, strings.Join(tried, "; "))}
}

// statusErr is the error of an answer that is not 2xx or 503.
func statusErr(what string, r *reply) error {
	msg := serverMsg(r.body)
	code := exitError
	switch r.resp.StatusCode {
	case http.StatusNotFound:
		if strings.HasPrefix(msg, "no such endpoint") {
			return &cliError{exitError, fmt.Sprintf("%s: %s does not have this endpoint (a kvserver older than this kvctl?): %s", what, r.endpoint, msg)}
		}
		code = exitNotFound
	case http.StatusConflict:
		code = exitConflict
	case http.StatusInsufficientStorage:
		code = exitNoSpace
	case http.StatusGatewayTimeout:
		code = exitUnknown
	case http.StatusServiceUnavailable:
		code = exitUnavailable
	}
	return &cliError{code, fmt.Sprintf("%s: %s: %s: %s", what, r.endpoint, r.resp.Status, msg)}
}

// notSent says whether err certainly came before the request reached a
// server: it could not connect.
func notSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// unwrapURL drops the "Get "http://...": " that net/http puts before an
// error; the messages name the endpoint already.
func unwrapURL(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok || !strings.HasPrefix(err.Error(), `Get "`) && !strings.HasPrefix(err.Error(), `Post "`) && !strings.HasPrefix(err.Error(), `Delete "`) {
			return err
		}
		err = u.Unwrap()
	}
}

// jsonBody is a request body of v encoded as JSON.
func jsonBody(v any) func() (io.Reader, error) {
	b, err := json.Marshal(v)
	return func() (io.Reader, error) { return bytes.NewReader(b), err }
}
