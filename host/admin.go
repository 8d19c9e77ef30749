package host

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/internal/httpserve"
	"github.com/devshard/devshard/jobs"
)

// The admin endpoint: the operator's view of the job queue
// (hostapi.AdminRoutes), served on its own listener, local only by
// default. Every request carries the admin token, a secret the host writes
// to a file only its user can read, so an operator on the same machine
// (the `devshard jobs` command) can use it and nobody else can. Every
// change is logged with who asked.

// NewAdminToken is a fresh random admin token.
func NewAdminToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// WriteAdminFile writes f to path, mode 0600, replacing the file of an
// earlier start.
func WriteAdminFile(path string, f hostapi.AdminFile) error {
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("admin file: %w", err)
	}
	// Removed first: an existing file would keep its mode through a
	// rewrite.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("admin file: %w", err)
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("admin file: %w", err)
	}
	return nil
}

// AdminHandler serves the admin routes over the engine's job queue to
// requests that carry token.
func AdminHandler(e *Engine, token string) http.Handler {
	a := &admin{e: e, token: token}
	mux := http.NewServeMux()
	mux.HandleFunc(hostapi.AdminListJobs.Pattern(), a.auth(a.list))
	mux.HandleFunc(hostapi.AdminGetJob.Pattern(), a.auth(a.get))
	mux.HandleFunc(hostapi.AdminResetJobs.Pattern(), a.auth(a.reset))
	mux.HandleFunc(hostapi.AdminRemoveJobs.Pattern(), a.auth(a.remove))
	mux.HandleFunc(hostapi.AdminRemoveAllJobs.Pattern(), a.auth(a.removeAll))
	return mux
}

type admin struct {
	e     *Engine
	token string
}

type adminHandler func(w http.ResponseWriter, r *http.Request, q *jobs.Queue, who string)

// auth admits requests with the token, and names who asked: the operator
// the tool names, and the address the request came from.
func (a *admin) auth(next adminHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		got, _ := strings.CutPrefix(r.Header.Get(hostapi.AdminTokenHeader), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(got), []byte(a.token)) != 1 {
			writeError(w, http.StatusUnauthorized, "the admin routes need the host's admin token (Authorization: Bearer <token>), which the host writes to its admin file (admin.file) at start")
			return
		}
		q := a.e.plane.q
		if !a.e.Ready() || q == nil {
			writeError(w, http.StatusServiceUnavailable, hostapi.Initializing)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, hostapi.MaxBody)
		next(w, r, q, operator(r))
	}
}

// operator is who asked, for the log: the name the tool sent (printable,
// at most 64 characters) at the request's address.
func operator(r *http.Request) string {
	name := strings.Map(func(c rune) rune {
		if unicode.IsPrint(c) && c != ' ' {
			return c
		}
		return -1
	}, r.Header.Get(hostapi.OperatorHeader))
	if len(name) > 64 {
		name = name[:64]
	}
	if name == "" {
		name = "unnamed"
	}
	return name + "@" + r.RemoteAddr
}

func (a *admin) list(w http.ResponseWriter, r *http.Request, q *jobs.Queue, _ string) {
	all := r.URL.Query().Get(hostapi.ParamAll)
	if all != "" && all != "true" && all != "false" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%s must be true or false, got %q", hostapi.ParamAll, all))
		return
	}
	js, err := q.List(r.Context(), jobs.Filter{All: all == "true", Detail: true})
	if err != nil {
		a.fail(w, err)
		return
	}
	out := hostapi.JobsResponse{Jobs: make([]hostapi.JobView, 0, len(js))}
	for _, j := range js {
		out.Jobs = append(out.Jobs, jobView(j, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *admin) get(w http.ResponseWriter, r *http.Request, q *jobs.Queue, _ string) {
	ids, err := resolve(r, q, []string{r.PathValue("job")})
	if err != nil {
		a.fail(w, err)
		return
	}
	j, err := q.Get(r.Context(), ids[0])
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, jobView(j, true))
}

func (a *admin) reset(w http.ResponseWriter, r *http.Request, q *jobs.Queue, who string) {
	a.change(w, r, q, who, "reset", q.Reset)
}

func (a *admin) remove(w http.ResponseWriter, r *http.Request, q *jobs.Queue, who string) {
	a.change(w, r, q, who, "removed", q.Remove)
}

// change resets or removes the jobs the body names, all or none, and logs
// it with who asked.
func (a *admin) change(w http.ResponseWriter, r *http.Request, q *jobs.Queue, who, did string, apply func(context.Context, ...string) error) {
	var req hostapi.JobIDsRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if len(req.IDs) == 0 {
		writeError(w, http.StatusBadRequest, "name the jobs in \"ids\"")
		return
	}
	ids, err := resolve(r, q, req.IDs)
	if err == nil {
		err = apply(r.Context(), ids...)
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	a.e.log.Info("admin: jobs "+did, "ids", strings.Join(ids, ","), "by", who)
	writeJSON(w, http.StatusOK, hostapi.JobsChangedResponse{IDs: ids, Count: len(ids)})
}

func (a *admin) removeAll(w http.ResponseWriter, r *http.Request, q *jobs.Queue, who string) {
	var req hostapi.RemoveAllRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	if req.Confirm != hostapi.RemoveAllConfirm {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("remove-all deletes every job of the queue; it is refused unless the body confirms it with {\"confirm\": %q}", hostapi.RemoveAllConfirm))
		return
	}
	n, err := q.RemoveAll(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	a.e.log.Warn("admin: every job removed", "count", n, "by", who)
	writeJSON(w, http.StatusOK, hostapi.JobsChangedResponse{Count: n})
}

// minPrefix is the shortest id prefix an operator may name a job by.
const minPrefix = 8

// resolve turns the ids an operator gave, full or unique prefixes of at
// least minPrefix hex digits, into full ids.
func resolve(r *http.Request, q *jobs.Queue, given []string) ([]string, error) {
	var all []jobs.Job
	out := make([]string, 0, len(given))
	for _, g := range given {
		g = strings.TrimSuffix(strings.ToLower(g), "…")
		if _, err := hex.DecodeString(g + strings.Repeat("0", len(g)%2)); err != nil || len(g) < minPrefix || len(g) > 64 {
			return nil, &badIDError{id: g}
		}
		if len(g) == 64 {
			if !slices.Contains(out, g) {
				out = append(out, g)
			}
			continue
		}
		if all == nil {
			var err error
			if all, err = q.List(r.Context(), jobs.Filter{All: true}); err != nil {
				return nil, err
			}
		}
		var match []string
		for _, j := range all {
			if strings.HasPrefix(j.ID, g) {
				match = append(match, j.ID)
			}
		}
		switch len(match) {
		case 0:
			return nil, &jobs.NotFoundError{IDs: []string{g}}
		case 1:
			if !slices.Contains(out, match[0]) {
				out = append(out, match[0])
			}
		default:
			return nil, &ambiguousError{prefix: g, n: len(match)}
		}
	}
	return out, nil
}

type badIDError struct{ id string }

func (e *badIDError) Error() string {
	return fmt.Sprintf("job id %q is neither a full id (64 hex digits) nor a prefix of at least %d hex digits", e.id, minPrefix)
}

type ambiguousError struct {
	prefix string
	n      int
}

func (e *ambiguousError) Error() string {
	return fmt.Sprintf("job id prefix %s names %d jobs; give more digits", e.prefix, e.n)
}

// fail maps an admin error to a status and its sentence.
func (a *admin) fail(w http.ResponseWriter, err error) {
	var bad *badIDError
	var amb *ambiguousError
	status := http.StatusInternalServerError
	switch {
	case errors.As(err, &bad), errors.As(err, &amb), errors.Is(err, jobs.ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, jobs.ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, jobs.ErrWrongState):
		status = http.StatusConflict
	case errors.Is(err, jobs.ErrClosed):
		status = http.StatusServiceUnavailable
	}
	if status == http.StatusInternalServerError {
		a.e.log.Error("admin request failed", "err", err)
	}
	writeError(w, status, err.Error())
}

// jobView is a job as the operator sees it; detail adds its input and
// result.
func jobView(j jobs.Job, detail bool) hostapi.JobView {
	escrow, inference := jobOrigin(j)
	v := hostapi.JobView{
		ID: j.ID, Kind: string(j.Kind), State: string(j.State), Attempt: j.Attempt, Worker: j.Worker,
		Escrow: escrow, Inference: inference,
		Created: j.Created, Started: j.Started, Heartbeat: j.Heartbeat, Finished: j.Finished, LeaseExpires: j.LeaseExpires,
		ErrorClass: j.ErrorClass, Error: j.Error,
	}
	if detail {
		v.Input, v.Result = j.Input, j.Result
	}
	return v
}

// serveAdmin binds the admin endpoint, if one is configured, and writes
// its URL and a fresh token to the admin file.
func (d *Daemon) serveAdmin(cfg DaemonConfig) error {
	if cfg.Jobs.AdminListen == "" {
		return nil
	}
	if cfg.Jobs.AdminFile == "" {
		return errors.New("the admin endpoint needs a file to write its token to: set admin.file (--admin-file, DEVSHARD_HOST_ADMIN_FILE)")
	}
	token, err := NewAdminToken()
	if err != nil {
		return err
	}
	if d.adminLn, err = net.Listen("tcp", cfg.Jobs.AdminListen); err != nil {
		return fmt.Errorf("cannot listen on %q for the admin endpoint (%v): set admin.listen (--admin-listen, DEVSHARD_HOST_ADMIN_LISTEN) to a free host:port such as 127.0.0.1:0, or to empty for none", cfg.Jobs.AdminListen, err)
	}
	if ip := d.adminLn.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		cfg.Logger.Warn("the admin endpoint listens beyond this machine; anyone with its token can reset and remove jobs", "addr", d.adminLn.Addr())
	}
	url := "http://" + d.adminLn.Addr().String()
	if err := WriteAdminFile(cfg.Jobs.AdminFile, hostapi.AdminFile{URL: url, Token: token}); err != nil {
		return err
	}
	d.admin = httpserve.Server(AdminHandler(d.Engine, token))
	go func() { _ = d.admin.Serve(d.adminLn) }()
	cfg.Logger.Info("admin endpoint listening", "url", url, "file", cfg.Jobs.AdminFile)
	return nil
}

// AdminAddr is the admin endpoint's bound address; empty when none.
func (d *Daemon) AdminAddr() string {
	if d.adminLn == nil {
		return ""
	}
	return d.adminLn.Addr().String()
}
