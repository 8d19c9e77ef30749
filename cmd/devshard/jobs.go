package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/internal/settings"
)

// jobsTimeout bounds each request the jobs commands make.
const jobsTimeout = 30 * time.Second

// jobsTarget is where the jobs commands find the host's admin endpoint.
type jobsTarget struct {
	home, file, url string
}

func newJobsCommand() *cobra.Command {
	t := &jobsTarget{}
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "List, reset and remove a running host's jobs through its admin endpoint",
		Long: `jobs talks to the admin endpoint of a host running on this machine. The host
writes the endpoint's URL and a fresh token to its admin file (admin.file,
<home>/admin.json, mode 0600) at every start, so these commands work as the
host's user without further setup. Every reset and removal is written to the
host's log with who asked. docs/jobs.md explains the queue.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&t.home, "home", "~/.devshard/host", "the host's home directory, where its admin file is")
	pf.StringVar(&t.file, "admin-file", "", "the host's admin file (default <home>/admin.json), as its admin.file setting names it")
	pf.StringVar(&t.url, "url", "", "the admin endpoint's URL, instead of the one in the admin file")
	cmd.AddCommand(newJobsListCommand(t), newJobsResetCommand(t), newJobsRemoveCommand(t), newJobsRemoveAllCommand(t))
	return cmd
}

// client reads the admin file and returns a client for the endpoint.
func (t *jobsTarget) client() (*hostapi.Admin, error) {
	path := t.file
	if path == "" {
		path = filepath.Join(settings.ExpandHome(t.home), "admin.json")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the host's admin file: %w (is the host running with this --home, as this user? --admin-file names another file)", err)
	}
	var f hostapi.AdminFile
	if err := json.Unmarshal(raw, &f); err != nil || f.Token == "" {
		return nil, fmt.Errorf("%s is not a host's admin file (JSON with url and token)", path)
	}
	if t.url != "" {
		f.URL = t.url
	}
	return &hostapi.Admin{BaseURL: f.URL, Token: f.Token, Operator: operatorName(), HTTP: &http.Client{Timeout: jobsTimeout}}, nil
}

// operatorName is who runs the command, for the host's log.
func operatorName() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	return os.Getenv("USER")
}

func newJobsListCommand(t *jobsTarget) *cobra.Command {
	var (
		all    bool
		detail string
		output string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "Print the unfinished and failed jobs as a table (--all adds the succeeded ones)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o must be table or json, got %q", output)
			}
			a, err := t.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), jobsTimeout)
			defer cancel()
			out := cmd.OutOrStdout()
			if detail != "" {
				j, err := a.Get(ctx, detail)
				if err != nil {
					return err
				}
				if output == "json" {
					return writeIndented(out, j)
				}
				return printJobDetail(out, j)
			}
			list, err := a.List(ctx, all)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeIndented(out, list)
			}
			return printJobs(out, list, time.Now())
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "also list the succeeded jobs, which are kept for jobs.lifetime after they finished")
	cmd.Flags().StringVar(&detail, "detail", "", "show one job whole, with its input and result: its id, or a unique prefix of at least 8 hex digits")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table for people, json for scripts (full ids, RFC 3339 times)")
	return cmd
}

// changeJobs is the RunE of a command that changes the jobs its arguments
// name through change, and says which it changed as done.
func changeJobs(t *jobsTarget, done string, change func(*hostapi.Admin, context.Context, []string) (hostapi.JobsChangedResponse, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, ids []string) error {
		a, err := t.client()
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), jobsTimeout)
		defer cancel()
		res, err := change(a, ctx, ids)
		if err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "%s %d job(s): %s\n", done, res.Count, strings.Join(res.IDs, " "))
		return nil
	}
}

func newJobsResetCommand(t *jobsTarget) *cobra.Command {
	return &cobra.Command{
		Use:   "reset ID...",
		Short: "Make failed jobs ready again, with their attempts at zero (all or none)",
		Long: `reset makes failed jobs ready again: a worker claims each afresh, with its
attempts at zero. It is all or none: an unknown id, or a job that has not
failed, refuses the whole call and changes nothing. An id is the full id or
a unique prefix of at least 8 hex digits, as 'jobs list' prints it.`,
		Args: cobra.MinimumNArgs(1),
		RunE: changeJobs(t, "reset", (*hostapi.Admin).Reset),
	}
}

func newJobsRemoveCommand(t *jobsTarget) *cobra.Command {
	return &cobra.Command{
		Use:   "remove ID...",
		Short: "Delete jobs in any state (all or none)",
		Long: `remove deletes jobs in any state. It is all or none: an unknown id refuses
the whole call. A worker still running a removed job has its result refused;
the same work enqueued again makes a fresh job. An id is the full id or a
unique prefix of at least 8 hex digits, as 'jobs list' prints it.`,
		Args: cobra.MinimumNArgs(1),
		RunE: changeJobs(t, "removed", (*hostapi.Admin).Remove),
	}
}

func newJobsRemoveAllCommand(t *jobsTarget) *cobra.Command {
	var really bool
	cmd := &cobra.Command{
		Use:   "remove-all",
		Short: "Delete every job of the queue, in one transaction (needs --really-do-it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !really {
				return errors.New("remove-all deletes every job of the host's queue, running ones included, and cannot be undone; it runs only with --really-do-it")
			}
			a, err := t.client()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), jobsTimeout)
			defer cancel()
			n, err := a.RemoveAll(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d job(s)\n", n)
			return nil
		},
	}
	cmd.Flags().BoolVar(&really, "really-do-it", false, "confirm that every job is to be deleted")
	return cmd
}

func writeIndented(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printJobs prints the jobs as a table, times relative to now.
func printJobs(out io.Writer, list []hostapi.JobView, now time.Time) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(out, "no jobs")
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tKIND\tESCROW/NONCE\tWORKER\tSTATE\tTRY\tCREATED\tELAPSED\tHEARTBEAT\tERROR")
	for _, j := range list {
		origin := "-"
		if j.Escrow != 0 {
			origin = fmt.Sprintf("%d/%d", j.Escrow, j.Inference)
		}
		heartbeat := "-"
		if !j.Heartbeat.IsZero() {
			heartbeat = ago(now.Sub(j.Heartbeat)) + " ago"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", shortID(j.ID), j.Kind, origin, orDash(shortWorker(j.Worker)), j.State, j.Attempt,
			j.Created.Local().Format("2006-01-02 15:04:05"), ago(elapsed(j, now)), heartbeat, orDash(jobError(j)))
	}
	return w.Flush()
}

// printJobDetail prints one job whole: its fields, then its input and
// result, indented when they are JSON.
func printJobDetail(out io.Writer, j hostapi.JobView) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	at := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format(time.RFC3339)
	}
	rows := [][2]string{
		{"id", j.ID}, {"kind", j.Kind}, {"state", j.State}, {"try", fmt.Sprint(j.Attempt)}, {"worker", orDash(j.Worker)},
		{"created", at(j.Created)}, {"started", at(j.Started)}, {"heartbeat", at(j.Heartbeat)}, {"lease expires", at(j.LeaseExpires)},
		{"finished", at(j.Finished)}, {"error", orDash(jobError(j))},
	}
	if j.Escrow != 0 {
		rows = append(rows[:2], append([][2]string{{"escrow", fmt.Sprint(j.Escrow)}, {"nonce", fmt.Sprint(j.Inference)}}, rows[2:]...)...)
	}
	for _, r := range rows {
		fmt.Fprintf(w, "%s:\t%s\n", r[0], r[1])
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, part := range []struct {
		name string
		raw  []byte
	}{{"input", j.Input}, {"result", j.Result}} {
		if len(part.raw) == 0 {
			continue
		}
		var pretty bytes.Buffer
		if json.Indent(&pretty, part.raw, "", "  ") != nil {
			pretty.Reset()
			fmt.Fprintf(&pretty, "%q", part.raw)
		}
		fmt.Fprintf(out, "%s:\n%s\n", part.name, pretty.String())
	}
	return nil
}

// elapsed is how long the job has waited (ready), run (running) or ran
// (finished).
func elapsed(j hostapi.JobView, now time.Time) time.Duration {
	switch {
	case j.State == "ready" || j.Started.IsZero():
		return now.Sub(j.Created)
	case !j.Finished.IsZero():
		return j.Finished.Sub(j.Started)
	default:
		return now.Sub(j.Started)
	}
}

func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// shortWorker shortens a worker account (40 hex digits) for the table.
func shortWorker(w string) string {
	if len(w) == 40 {
		return w[:10] + "…"
	}
	return w
}

func jobError(j hostapi.JobView) string {
	msg := j.Error
	if j.ErrorClass != "" {
		msg = j.ErrorClass + ": " + msg
	}
	if r := []rune(msg); len(r) > 60 {
		msg = string(r[:59]) + "…"
	}
	return msg
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
