package lgbm

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testdata/{binary,multiclass}.txt are LightGBM 4 models (version=v4); the .json files
// hold rows and LightGBM's own predict_proba / predict for them.
type expected struct {
	Rows          [][]float64 `json:"rows"`
	Probabilities [][]float64 `json:"probabilities"`
	Labels        []int64     `json:"labels"`
}

func TestPredictEqualsLightGBM(t *testing.T) {
	for _, name := range []string{"binary", "multiclass"} {
		t.Run(name, func(t *testing.T) {
			m, err := Load(filepath.Join("testdata", name+".txt"), 2)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := os.ReadFile(filepath.Join("testdata", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			var want expected
			if err := json.Unmarshal(raw, &want); err != nil {
				t.Fatal(err)
			}
			if m.Task != Classification || m.NFeatures != 3 || m.NClasses != len(want.Probabilities[0]) {
				t.Fatalf("task %v, %d features, %d classes", m.Task, m.NFeatures, m.NClasses)
			}
			var rows []float64
			for _, r := range want.Rows {
				rows = append(rows, r...)
			}
			probs, labels, err := m.Predict(rows, len(want.Rows))
			if err != nil {
				t.Fatal(err)
			}
			for i, row := range want.Probabilities {
				if labels[i] != want.Labels[i] {
					t.Errorf("row %d: label %d, LightGBM says %d", i, labels[i], want.Labels[i])
				}
				for j, p := range row {
					if got := probs[i*m.NClasses+j]; math.Abs(got-p) > 1e-9 {
						t.Errorf("row %d class %d: %v, LightGBM says %v", i, j, got, p)
					}
				}
			}
		})
	}
}

func TestPredictNoRows(t *testing.T) {
	m, err := Load(filepath.Join("testdata", "binary.txt"), 1)
	if err != nil {
		t.Fatal(err)
	}
	probs, labels, err := m.Predict(nil, 0)
	if err != nil || len(probs) != 0 || len(labels) != 0 {
		t.Fatalf("got %v %v %v", probs, labels, err)
	}
}

func TestLoadRefuses(t *testing.T) {
	dir := t.TempDir()
	model, err := os.ReadFile(filepath.Join("testdata", "binary.txt"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct{ text, problem string }{
		"not a model": {"hello\n", "not a LightGBM text model"},
		"linear trees": {strings.Replace(string(model), "\nis_linear=0", "\nis_linear=1", 1),
			"linear trees"},
	}
	for name, c := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".txt")
		if err := os.WriteFile(path, []byte(c.text), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path, 1); err == nil || !strings.Contains(err.Error(), c.problem) {
			t.Errorf("%s: error %v, want one saying %q", name, err, c.problem)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.txt"), 1); err == nil {
		t.Error("a missing file loaded")
	}
}
